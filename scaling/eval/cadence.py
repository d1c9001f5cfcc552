"""How often a stage evaluates: ``eval.every_samples`` if set, else ``eval.points`` per stage."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from scaling.config import stage_phases


def trained_samples(cfg: DictConfig) -> int:
    """The samples the stage trains on: whole steps of each phase (``train.samples`` rounded down)."""
    return sum(p.steps * p.batch_size for p in stage_phases(cfg))


def eval_every_samples(cfg: DictConfig) -> int:
    """The evaluation cadence in samples seen (0: only at the end of the stage).

    ``eval.every_samples`` wins when set (0 included). Unset, the stage's samples are cut into
    ``eval.points`` equal parts so every stage draws a curve of that many points (the last at its
    end), whatever its length: a fixed cadence left a stage shorter than it one point. A stage of
    fewer steps than points evaluates after every step."""
    if cfg.eval.every_samples is not None:
        return int(cfg.eval.every_samples)
    points = int(cfg.eval.points)
    return 0 if points <= 1 else max(1, math.ceil(trained_samples(cfg) / points))
