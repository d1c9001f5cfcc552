"""Optimisers and schedules of the stages: AdamW or LAMB (DeepSpeed's rule by default) over per-tower,
per-layer parameter groups (layer-wise lr decay, no weight decay on norms/biases/embeddings/temperature), and a cosine
schedule with linear warm-up driven by optimiser steps."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scaling.train.lamb import Lamb

# Parameters that must not shrink towards zero: embeddings, positional tables, special tokens and
# the temperature (1-D tensors - norms and biases - are caught by their rank).
NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "mask_token", "positional_embedding",
                     "token_embedding.weight", "logit_scale", "logit_bias", "reg_token")
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|resblocks|layers)\.(\d+)\.")
_EMBED = re.compile(r"(patch_embed|pos_embed|cls_token|mask_token|reg_token|token_embedding|"
                    r"positional_embedding|rope)")


def wants_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIXES)


def num_layers(module: nn.Module) -> int:
    """Number of transformer blocks in a tower (the highest block index + 1)."""
    ids = [int(m.group(1)) for n, _ in module.named_parameters() if (m := _BLOCK.search(n))]
    return max(ids) + 1 if ids else 0


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for what sits on top (norms, heads)."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if _EMBED.search(name):
        return 0
    return depth + 1


@dataclass(frozen=True)
class TowerGroups:
    """How one tower (a submodule of the model) is optimised."""

    name: str  # group prefix and lr metric name, e.g. "vision", "text"
    module: nn.Module
    lr: float
    weight_decay: float
    layer_decay: float = 1.0
    layer_fn: Callable[[str, int], int] | None = None  # (param name, depth) -> layer id; default layer_id


def param_groups(towers: Iterable[TowerGroups], extra: Mapping[str, nn.Parameter] | None = None,
                 extra_lr: float | None = None) -> list[dict]:
    """Parameter groups with per-layer lr scales (``decay ** (depth + 1 - layer)``).

    Every group carries ``name`` (``<tower>.l<layer>.<decay|no_decay>``), ``tower``,
    ``peak_lr`` (the schedule's target) and ``lr_scale``. ``extra`` holds stray parameters such
    as ``logit_scale``: no weight decay, lr ``extra_lr`` (defaults to the first tower's).
    """
    groups: dict[str, dict] = {}
    seen: set[int] = set()
    towers = list(towers)
    for tower in towers:
        depth = getattr(tower.module, "num_layers", None) or num_layers(tower.module)
        lid_of = tower.layer_fn or layer_id
        for name, param in tower.module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lid = lid_of(name, depth)
            decay = wants_decay(name, param)
            key = f"{tower.name}.l{lid}.{'decay' if decay else 'no_decay'}"
            scale = tower.layer_decay ** (depth + 1 - lid)
            group = groups.setdefault(key, {
                "name": key, "tower": tower.name, "params": [], "lr_scale": scale,
                "peak_lr": tower.lr * scale, "lr": tower.lr * scale,
                "weight_decay": tower.weight_decay if decay else 0.0,
            })
            group["params"].append(param)
    for name, param in (extra or {}).items():
        if param.requires_grad and id(param) not in seen:
            lr = extra_lr if extra_lr is not None else towers[0].lr
            groups[name] = {"name": name, "tower": name, "params": [param], "lr_scale": 1.0,
                            "peak_lr": lr, "lr": lr, "weight_decay": 0.0}
    return list(groups.values())


def build_optimizer(name: str, groups: list[dict], betas: Iterable[float], eps: float,
                    lamb: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """``adamw`` (torch's fused kernel) or ``lamb`` (``scaling.train.lamb.Lamb``: the same fused
    kernel plus trust ratios; runs on CPU and under DeepSpeed as a client optimizer). ``lamb``
    is the ``optim`` section (or any mapping) whose ``lamb_*`` keys pick the LAMB rule; absent
    keys take DeepSpeed's rule, as EVA trained. Gradient clipping is done by the loop."""
    betas = tuple(float(b) for b in betas)
    if name == "adamw":
        # fused: one kernel over all tensors; on CPU the per-tensor loop cost ~5x the step time
        optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=betas, eps=eps, fused=True)
    elif name == "lamb":
        optimizer = Lamb(groups, lr=groups[0]["lr"], betas=betas, eps=eps, **lamb_options(lamb))
    else:
        raise ValueError(f"optim.name: unknown optimizer {name!r}; use adamw or lamb")
    optimizer.register_step_post_hook(clamp_logit_scale)
    return optimizer


LOGIT_SCALE_MAX = math.log(100)


@torch.no_grad()
def clamp_logit_scale(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """After every step, the CLIP temperature's log-inverse into ``[0, ln 100]`` (open_clip's and
    EVA-CLIP's ``train.py``: ``logit_scale.clamp_(0, math.log(100))``). It acts on the tensors the
    optimizer steps (DeepSpeed's fp32 partitions, which it copies to the model), found by the
    group name ``param_groups`` gives the temperature."""
    for group in optimizer.param_groups:
        if group.get("name") == "logit_scale":
            for p in group["params"]:
                p.clamp_(0.0, LOGIT_SCALE_MAX)


def lamb_options(optim: Mapping[str, Any] | None) -> dict[str, Any]:
    """``Lamb`` keyword arguments from the ``optim.lamb_*`` keys (see docs/training.md)."""
    optim = optim or {}
    return {"rule": str(optim.get("lamb_rule", "deepspeed")),
            "max_coeff": float(optim.get("lamb_max_coeff", 10.0)),
            "min_coeff": float(optim.get("lamb_min_coeff", 0.01)),
            "trust_clip": bool(optim.get("lamb_trust_clip", False))}


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_factor`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineSchedule:
    """Sets every group's lr from its ``peak_lr`` for the optimiser step about to be taken."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr
        self.step_count = 0
        self.apply()

    def apply(self) -> None:
        for group in self.optimizer.param_groups:
            peak = group["peak_lr"]
            min_factor = min(1.0, self.min_lr * group.get("lr_scale", 1.0) / peak) if peak > 0 else 0.0
            group["lr"] = peak * lr_factor(self.step_count, self.total_steps, self.warmup_steps, min_factor)

    def step(self) -> None:
        self.step_count += 1
        self.apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr}

    def load_state_dict(self, state: Mapping) -> None:
        self.step_count = int(state["step_count"])
        self.apply()


def tower_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current peak (top layer) lr of each tower, for ``train/lr/<tower>``."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        tower = group.get("tower", "all")
        out[tower] = max(out.get(tower, 0.0), float(group["lr"]))
    return out
