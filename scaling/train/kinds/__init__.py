"""The training modules of the stage kinds, by kind name: ``mim``, ``clip``, and any registered
with :func:`register_training` (its torch-free description is ``scaling.kinds``)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from scaling.train.errors import StageConfigError
from scaling.train.kinds.base import KindTraining
from scaling.train.kinds.clip import ClipTraining
from scaling.train.kinds.mim import MimTraining

__all__ = ["KindTraining", "build_stage_model", "register_training", "training_kind", "unregister_training"]

_TRAINING: dict[str, type[KindTraining]] = {}


def register_training(name: str, training: type[KindTraining]) -> type[KindTraining]:
    """Train stages of kind ``name`` (registered in ``scaling.kinds``) with ``training``."""
    _TRAINING[name] = training
    return training


def unregister_training(name: str) -> None:
    _TRAINING.pop(name, None)


def training_kind(name: str) -> type[KindTraining]:
    if name not in _TRAINING:
        raise StageConfigError(f"stage kind '{name}' has no training module: register one with "
                               f"scaling.train.kinds.register_training (known: {', '.join(_TRAINING)})")
    return _TRAINING[name]


def build_stage_model(cfg: DictConfig, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """(trained model, frozen teacher or None, info) for the stage kind in ``cfg``."""
    return training_kind(cfg.stage.kind)(cfg).build(device)


register_training("mim", MimTraining)
register_training("clip", ClipTraining)
