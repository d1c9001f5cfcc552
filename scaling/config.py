"""Load, merge, override and validate stage configs.

A stage's config is built in layers, each validated as it is merged so that an error names the
file (or the command line) that introduced it:

1. the typed schema (``scaling.config_schema.StageConfig``): every key and its default;
2. ``experiments/recipes/<kind>.yaml``: the paper recipe for the stage kind;
3. ``experiments/recipes/<kind>/<rung>.yaml``: the rung's own recipe (if any);
4. ``experiments/recipes/proxy.yaml``: CPU sizes, when the stage runs as a proxy;
5. user files, then ``key=value`` overrides (OmegaConf dotlist).

The resolved config is what a stage saves with its run, what MLflow gets as params, and what the
fingerprint hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from scaling import config_provenance as provenance
from scaling.config_bounds import check_bounds
from scaling.config_dialect import ConfigError, all_keys, load_yaml, merge_layer, parse_overrides
from scaling.config_schema import CHOICES, MINIMUM, NULLABLE, POSITIVE, RANGES, StageConfig
from scaling.kinds import kind_names, stage_kind
from scaling.models.registry import UnknownRungError, get_rung
from scaling.paths import EXPERIMENTS_DIR
from scaling.stages import stage_name
from scaling.uris import mask_mapping

RECIPES_DIR = EXPERIMENTS_DIR / "recipes"


def schema() -> DictConfig:
    """The typed, fully defaulted stage config (struct mode: unknown keys are errors, except in
    the open mappings ``FREE_DICTS``)."""
    cfg = OmegaConf.structured(StageConfig)
    OmegaConf.set_struct(cfg, True)
    _open_dicts(cfg)
    return cfg


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a stage config (not inside its open mappings)."""
    return all_keys(cfg, prefix, FREE_DICTS)


# Open mappings of the stage config: tower overrides and tags; their keys are checked by their consumers.
FREE_DICTS = ("model.vision", "model.text", "tracking.tags")


def merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    """Merge one stage-config layer onto ``base``; errors name ``source`` and the offending key."""
    merged = merge_layer(base, layer, source)
    OmegaConf.set_struct(merged, True)
    validate(merged, source)
    provenance.record(layer, source)
    return merged


def _open_dicts(cfg: DictConfig) -> None:
    for key in FREE_DICTS:
        node = OmegaConf.select(cfg, key)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)


def validate(cfg: DictConfig, source: str = "config") -> None:
    """Check values the type system cannot: choices, ranges, positivity, cross-field rules."""
    if cfg.stage.kind not in kind_names():
        raise ConfigError(f"{source}: 'stage.kind' must be one of {', '.join(kind_names())}; got {cfg.stage.kind!r}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(
                f"{source}: '{key}' must be one of {', '.join(map(str, allowed))}; got {value!r}"
            )
    for key, (low, high, inclusive) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        ok = low <= value <= high if inclusive else low <= value < high
        if not ok:
            bracket = "]" if inclusive else ")"
            raise ConfigError(f"{source}: '{key}' must be in [{low}, {high}{bracket}; got {value}")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise ConfigError(f"{source}: '{key}' must be > 0; got {value}")
    for key, low in MINIMUM.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in NULLABLE:
            continue
        if value is None or value < low:
            raise ConfigError(f"{source}: '{key}' must be >= {low}; got {value}")
    scale = list(cfg.data.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"{source}: 'data.crop_scale' must be [low, high] with 0 < low <= high <= 1; got {scale}")
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"{source}: 'optim.betas' must be two numbers in [0, 1); got {betas}")
    mb = cfg.train.micro_batch
    if mb is not None and (mb <= 0 or cfg.train.batch_size % mb):
        raise ConfigError(
            f"{source}: 'train.micro_batch' ({mb}) must be > 0 and divide 'train.batch_size' "
            f"({cfg.train.batch_size})"
        )
    if cfg.distributed.zero_stage > 0 and not cfg.distributed.deepspeed:
        raise ConfigError(
            f"{source}: 'distributed.zero_stage={cfg.distributed.zero_stage}' needs "
            "'distributed.deepspeed=true' (ZeRO is DeepSpeed's)"
        )
    if cfg.phases:
        stage_phases(cfg, source)
    check_bounds(cfg, source)


@dataclass(frozen=True)
class Phase:
    """One phase of a stage with every value resolved (see ``config_schema.PhaseSection``)."""

    index: int
    name: str
    samples: int
    batch_size: int
    micro_batch: int | None
    patch_dropout: float
    image_size: int | None

    @property
    def steps(self) -> int:
        return max(1, self.samples // self.batch_size)

    def size(self, base: int) -> int:
        """The image size this phase trains at: its own, else the stage's ``base``."""
        return self.image_size or base


def first_resize(phases: list[Phase], base: int) -> tuple[Phase, int, int] | None:
    """The first phase whose image size differs from the first phase's, as (phase, from, to).

    Such a phase cannot run under DeepSpeed: its engine keeps the weights and optimizer state in
    flat buffers sized when it starts, which the resampled position table no longer fits. The loop
    refuses it and the planner reports it, both from this one check."""
    first = phases[0].size(base)
    return next(((p, first, p.size(base)) for p in phases if p.size(base) != first), None)


def stage_phases(cfg: DictConfig, source: str = "config") -> list[Phase]:
    """The stage's phases in order (one, the stage itself, when ``phases`` is empty)."""
    total = int(cfg.train.samples)
    raw = list(cfg.phases) or [OmegaConf.create({})]
    counts: list[int | None] = []
    for i, phase in enumerate(raw):
        key = f"phases[{i}]"
        if phase.get("samples") is not None and phase.get("fraction") is not None:
            raise ConfigError(f"{source}: '{key}' sets both 'samples' and 'fraction'; give one")
        if phase.get("fraction") is not None:
            if not 0 < phase.fraction <= 1:
                raise ConfigError(f"{source}: '{key}.fraction' must be in (0, 1]; got {phase.fraction}")
            counts.append(round(total * float(phase.fraction)))
        else:
            counts.append(None if phase.get("samples") is None else int(phase.samples))
    if counts.count(None) > 1:
        raise ConfigError(f"{source}: 'phases': at most one phase may leave out 'samples'/'fraction' "
                          "(it takes the rest of 'train.samples')")
    rest = total - sum(c for c in counts if c is not None)
    counts = [rest if c is None else c for c in counts]
    if sum(counts) != total or any(c <= 0 for c in counts):
        raise ConfigError(f"{source}: 'phases' samples {counts} must be > 0 and add up to "
                          f"'train.samples' ({total}); use 'fraction' to follow a changed total")
    out = []
    for i, (phase, samples) in enumerate(zip(raw, counts, strict=True)):
        key = f"phases[{i}]"
        batch = int(phase.get("batch_size") or cfg.train.batch_size)
        micro = phase.get("micro_batch")
        if micro is None and phase.get("batch_size") is None:
            micro = cfg.train.micro_batch
        if micro is not None and (micro <= 0 or batch % micro):
            raise ConfigError(f"{source}: '{key}.micro_batch' ({micro}) must be > 0 and divide its "
                              f"batch size ({batch})")
        if batch <= 0:
            raise ConfigError(f"{source}: '{key}.batch_size' must be > 0; got {batch}")
        drop = phase.get("patch_dropout")
        drop = float(cfg.model.patch_dropout if drop is None else drop)
        if not 0 <= drop < 1:
            raise ConfigError(f"{source}: '{key}.patch_dropout' must be in [0, 1); got {drop}")
        size = phase.get("image_size")
        size = cfg.data.image_size if size is None else int(size)
        out.append(Phase(i, str(phase.get("name") or f"phase{i}"), samples, batch,
                         None if micro is None else int(micro), drop, size))
    return out


def _check_rung(name: str, key: str, source: str) -> None:
    try:
        get_rung(name)
    except UnknownRungError as exc:
        raise ConfigError(f"{source}: '{key}': {exc}") from None


def recipe_files(kind: str, rung: str, proxy: bool) -> list[Path]:
    """The recipe layers that apply to a stage, in merge order (missing optional ones skipped)."""
    spec = get_rung(rung)
    files = [RECIPES_DIR / f"{kind}.yaml"]
    # a rung file may be named by any of the rung's names (clip/18B.yaml, mim/Ti14.yaml)
    for name in dict.fromkeys((rung, spec.name, *spec.aliases)):
        candidate = RECIPES_DIR / kind / f"{name}.yaml"
        if candidate.is_file():
            files.append(candidate)
            break
    if proxy:
        files.append(RECIPES_DIR / "proxy.yaml")
        files.append(RECIPES_DIR / "proxy" / f"{kind}.yaml")
    return [f for f in files if f.is_file()]


def load_stage_config(
    kind: str,
    rung: str,
    proxy: bool = True,
    overrides: Sequence[str] = (),
    files: Iterable[str | Path] = (),
    extra: dict[str, Any] | DictConfig | None = None,
) -> DictConfig:
    """Resolve a stage config from the recipes, user ``files``, ``extra`` (programmatic) and overrides."""
    description = stage_kind(kind)  # ConfigError naming the known kinds
    _check_rung(rung, "stage.rung", "command line")
    provenance.begin(stage_name(kind, rung))
    cfg = schema()
    cfg = merge(cfg, {"stage": {"kind": kind, "rung": rung, "proxy": proxy}}, "command line")
    if description.config:
        cfg = merge(cfg, dict(description.config), f"stage kind '{kind}'")
    for path in recipe_files(kind, rung, proxy):
        cfg = merge(cfg, load_yaml(path), str(path))
    for path in files:
        cfg = merge(cfg, load_yaml(path), str(path))
    if extra:
        cfg = merge(cfg, extra, "ladder")
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides), "command line")
    # The stage identity is fixed by the arguments, not by a layer that happens to set it.
    cfg.stage.kind, cfg.stage.rung, cfg.stage.proxy = kind, rung, proxy
    if cfg.stage.teacher_rung is not None:
        _check_rung(cfg.stage.teacher_rung, "stage.teacher_rung", "config")
    if cfg.stage.name is None:
        cfg.stage.name = stage_name(kind, rung)
        provenance.record({"stage": {"name": cfg.stage.name}}, "stage kind and rung")
        check_bounds(cfg, "command line")  # the name a rung key made
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(cfg: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dot-keyed string params (MLflow params), e.g. ``{'optim.lr': '0.0004'}``."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, full + "."))
        elif isinstance(value, (list, ListConfig)):
            out[full] = json.dumps(list(value))
        else:
            out[full] = "" if value is None else str(value)
    return out


# Keys that say where or how a stage runs, not what it computes: they must not change its identity.
NON_IDENTITY_PREFIXES = ("tracking.", "resources.", "out_dir", "train.log_every", "train.ckpt_every",
                         "train.keep_checkpoints", "data.cache_dir", "data.workers", "eval.batch_size",
                         "stage.name")


def fingerprint(cfg: DictConfig | dict[str, Any], upstream: Sequence[str] = ()) -> str:
    """Hash of what a stage computes: its resolved config (minus placement) + upstream fingerprints."""
    flat = {
        k: v for k, v in flatten(cfg).items()
        if not any(k == p or k.startswith(p) for p in NON_IDENTITY_PREFIXES)
    }
    payload = json.dumps({"config": flat, "upstream": list(upstream)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # written down: a URI's password masked (the job gets the real config by pickle)
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(mask_mapping(to_container(cfg)))))
    tmp.replace(path)
    return path
