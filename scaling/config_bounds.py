"""Bounds a stage config's values must keep, checked when it loads, before anything runs.

The schema's types let ``optim.lr=1e400`` (infinity), ``optim.lr=nan`` or
``train.batch_size=1e21`` through; each would train to NaN, crash deep in the loop or fill
memory building one batch. The limits are far above any published run, so they only catch
typos and units mistakes:

- global batch sizes (``train.batch_size``, a phase's, ``eval.batch_size``): at most 2^21
  (2,097,152), about 20x EVA-CLIP-18B's 108k, the largest contrastive batch the papers ran;
- sample counts (``train.samples``, warmup, eval period): at most 10^12, ~100x the largest
  published CLIP run (EVA-CLIP-18B saw 6B samples);
- the synthetic world (``data.synth_samples``, written to disk once): at most 10^7;
  the shuffle buffer (samples held in memory per worker): at most 10^6.

Names that become folders or MLflow experiments (``stage.name``, ``tracking.experiment``) are
restricted to letters, digits and ``_ . - @ +``, without ``..``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaling.config_dialect import ConfigError
from scaling.uris import check_tracking_uri, mask

MAX_BATCH = 2**21
MAX_SAMPLES = 10**12
UPPER: dict[str, int] = {
    "train.batch_size": MAX_BATCH,
    "train.micro_batch": MAX_BATCH,
    "eval.batch_size": MAX_BATCH,
    "train.samples": MAX_SAMPLES,
    "optim.warmup_samples": MAX_SAMPLES,
    "eval.every_samples": MAX_SAMPLES,
    "eval.max_samples": MAX_SAMPLES,
    "data.synth_samples": 10**7,
    "data.shuffle_buffer": 10**6,
}
# > 0 when set (None: the documented fallback)
POSITIVE_IF_SET = ("optim.text_lr", "optim.eps", "loss.temperature", "loss.init_temperature",
                   "eval.max_samples", "data.image_size")
# >= 0 when set; 0 means "off" (no decay, no clipping, a zero floor)
NON_NEGATIVE = ("optim.weight_decay", "optim.text_weight_decay", "optim.min_lr", "optim.grad_clip",
                "data.shuffle_buffer")
NAMES = ("stage.name", "tracking.experiment")
_NAME = re.compile(r"[A-Za-z0-9_.@+-]+")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a folder or an experiment (None: it can)."""
    if not name or not _NAME.fullmatch(name):
        return "use letters, digits and _ . - @ + only (no path separators or spaces)"
    if ".." in name or name.startswith("."):
        return "it must not start with '.' or hold '..'"
    return None


def check_name(name: str, key: str, source: str = "command line") -> None:
    why = name_problem(str(name))
    if why is not None:
        raise ConfigError(f"{source}: '{key}' is {name!r}: {why}")


def check_uri(uri: str | None, key: str, source: str = "command line") -> None:
    why = None if uri is None else check_tracking_uri(str(uri))
    if why is not None:
        raise ConfigError(f"{source}: '{key}' is '{mask(uri)}': {why}")


def check_bounds(cfg: DictConfig, source: str) -> None:
    """Every value finite, within its limit, names safe, the tracking URI one MLflow accepts."""
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: '{key}' is {value}: every number must be finite")
    for key, high in UPPER.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value > high:
            raise ConfigError(f"{source}: '{key}' is {value}, above the limit {high:.3g} "
                              "(see scaling/config_bounds.py for why); check the units")
    for key in POSITIVE_IF_SET:
        value = OmegaConf.select(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{source}: '{key}' must be > 0; got {value}")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{source}: '{key}' must be >= 0; got {value}")
    for i, phase in enumerate(cfg.phases):
        batch = phase.get("batch_size")
        if batch is not None and batch > MAX_BATCH:
            raise ConfigError(f"{source}: 'phases[{i}].batch_size' is {batch}, above the limit {MAX_BATCH}")
    for key in NAMES:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            check_name(value, key, source)
    check_uri(cfg.tracking.uri, "tracking.uri", source)


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf, lists indexed as the errors name them (``phases[0].fraction``)."""
    if isinstance(node, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(node)]
    else:
        return [(prefix, node)]
    return [leaf for key, value in items for leaf in _leaves(value, key)]
