"""The stage kinds: each kind of stage (``mim``, ``clip``, or one you add) is one registered
``StageKind`` that the config loader, the planners, the costs, the sweep and the report ask
instead of naming kinds themselves (torch-free). ``docs/extending.md`` says how to add one."""

from __future__ import annotations

from typing import Any

from scaling.kinds.base import (
    MemoryShape,
    StageKind,
    default_kinds,
    kind_names,
    register_kind,
    stage_kind,
    unregister_kind,
)
from scaling.kinds.clip import ClipKind
from scaling.kinds.mim import MimKind
from scaling.stages import TRAIN_METRICS, eval_set_name

__all__ = ["MemoryShape", "StageKind", "default_kinds", "kind_names", "logged_metrics", "register_kind",
           "split_stage_name", "stage_kind", "unregister_kind"]

# The built-in kinds, in the order a rung trains them.
register_kind(MimKind())
register_kind(ClipKind())


def split_stage_name(text: str) -> tuple[str, str] | None:
    """``'clip@18B'`` -> ``('clip', '18B')``; ``None`` unless a known kind, '@' and a rung."""
    kind, sep, rung = text.partition("@")
    return (kind, rung) if sep and kind in kind_names() and rung else None


def logged_metrics(cfg: Any) -> tuple[str, ...]:
    """Every metric a stage with resolved config ``cfg`` logs (rank 0), in the stage's own names.

    The eval sets are the ones the stage will load (``train.stage_data.resolve_sources``): the
    synthetic world's held-out sets unless ``data.train`` is set, then ``eval.classification`` /
    ``eval.retrieval``, named by ``scaling.stages.eval_set_name``.
    """
    kind = stage_kind(cfg.stage.kind)
    synthetic = cfg.data.train is None
    classification = cfg.eval.classification or ("synthetic" if synthetic else None)
    retrieval = cfg.eval.retrieval or ("synthetic" if synthetic else None)
    # a set the config names keeps its own name when the stage trains on the synthetic world
    names = (eval_set_name(classification, synthetic and not cfg.eval.classification, "classification")
             if classification else None,
             eval_set_name(retrieval, synthetic and not cfg.eval.retrieval, "retrieval") if retrieval else None)
    return (*TRAIN_METRICS, *(f"train/lr/{g}" for g in kind.lr_groups), *kind.train_metrics,
            *kind.eval_metrics(*names))
