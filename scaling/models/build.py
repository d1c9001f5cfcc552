"""Build CLIPs and MIM students from rung specs, on any device (``meta`` costs no memory)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch

from scaling.models.clip import EvaClip, MimStudent
from scaling.models.specs import RungSpec, TowerSpec
from scaling.models.text import build_text_tower, text_layer_id
from scaling.models.vision import (
    ATTENTION_BACKENDS,
    AttentionBackendError,
    EvaVisionTower,
    check_attention,
    vision_layer_id,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackendError",
    "EvaClip",
    "EvaVisionTower",
    "MimStudent",
    "build_clip",
    "build_mim",
    "build_vision",
    "text_layer_id",
    "vision_layer_id",
]


_META_LOCK = threading.RLock()  # the patch below is process-wide: one meta build at a time


@contextlib.contextmanager
def _init_context(device: torch.device | str) -> Iterator[None]:
    """Build on ``device``; on meta, skip timm's truncated-normal init (slow there, and moot)."""
    with torch.device(device):
        if torch.device(device).type != "meta":
            yield
            return
        with _META_LOCK, mock.patch("timm.models.eva.trunc_normal_", lambda t, *args, **kwargs: t):
            yield


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value}")


def build_vision(
    spec: TowerSpec,
    *,
    device: torch.device | str = "cpu",
    attn: str = "sdpa",
    patch_dropout: float = 0.0,
    grad_checkpointing: bool = False,
    drop_path: float = 0.0,
    subln_rescale: bool = False,
) -> EvaVisionTower:
    """One EVA vision tower (with the CLIP projection when ``spec.embed_dim`` is set).
    ``subln_rescale``: BAAI's EVA-02 MIM init of sub-LN towers (``vision.subln_init_rescale``)."""
    check_attention(attn, device)
    _check_rate("patch_dropout", patch_dropout)
    _check_rate("drop_path", drop_path)
    with _init_context(device):
        tower = EvaVisionTower(spec, attn=attn, patch_dropout=patch_dropout, drop_path=drop_path,
                               subln_rescale=subln_rescale)
    tower.set_grad_checkpointing(grad_checkpointing)
    return tower


def build_clip(
    spec: RungSpec,
    *,
    device: torch.device | str = "cpu",
    grad_checkpointing: bool = False,
    **vision: Any,
) -> EvaClip:
    """The EVA CLIP of a rung. ``device='meta'`` allocates nothing (any rung in seconds).
    ``vision``: the vision tower's options, as :func:`build_vision` takes them (``attn``,
    ``patch_dropout``, ``drop_path``, ``subln_rescale``)."""
    if spec.text is None:
        raise ValueError(
            f"{spec.name} is a MIM-only tower (no text tower); use build_mim or a CLIP rung"
        )
    visual = build_vision(spec.vision, device=device, grad_checkpointing=grad_checkpointing, **vision)
    with _init_context(device):
        text = build_text_tower(spec.text)
        model = EvaClip(spec, visual, text)
    text.set_grad_checkpointing(grad_checkpointing)
    return model


def build_mim(
    spec: RungSpec,
    target_dim: int,
    *,
    device: torch.device | str = "cpu",
    attn: str = "sdpa",
    grad_checkpointing: bool = False,
    drop_path: float = 0.0,
    subln_rescale: bool = False,
) -> MimStudent:
    """The MIM form of a rung's vision tower, predicting ``target_dim``-wide features (the
    teacher CLIP's embedding dim: ``scaling.costs.mim_target_dim``)."""
    if target_dim <= 0:
        raise ValueError(f"target_dim must be > 0; got {target_dim}")
    encoder = build_vision(
        spec.mim,
        device=device,
        attn=attn,
        grad_checkpointing=grad_checkpointing,
        drop_path=drop_path,
        subln_rescale=subln_rescale,
    )
    with _init_context(device):
        return MimStudent(encoder, target_dim)
