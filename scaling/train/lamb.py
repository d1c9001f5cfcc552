"""LAMB on top of torch's fused AdamW kernel, in DeepSpeed's form (EVA's) or timm's.

LAMB (You et al., 2019) moves a parameter ``p`` by ``step_size * r * u``, with ``u`` an Adam
update plus L2 weight decay and ``r`` the trust ratio ``||p|| / ||u||``. Two variants are kept:

* ``rule="deepspeed"`` (the default; DeepSpeed's ``FusedLamb``, which EVA-CLIP trained with):
  ``u = m / (sqrt(v) + eps) + wd * p`` from the raw moments, ``step_size = lr * sqrt(1 - b2^t)
  / (1 - b1^t)``, ``r = clamp(||p|| / ||u||, min_coeff, max_coeff)`` (0.01 and 10) on *every*
  tensor whatever its weight decay, and ``r = 1`` where ``||p||`` or ``||u||`` is 0
  (``csrc/lamb/fused_lamb_cuda_kernel.cu``).
* ``rule="timm"`` (timm's ``Lamb``, NVLAMB): ``u = m_hat / (sqrt(v_hat) + eps) + wd * p`` from
  bias-corrected moments, ``step_size = lr``, ``r`` unclamped (``trust_clip`` caps it at 1) and
  only on groups with weight decay (or all, ``always_adapt``).

AdamW's step is ``p' = p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)`` exactly: timm's ``u``
times ``lr``. With ``eps / sqrt(1 - b2^t)`` for ``eps`` and ``wd * sqrt(1 - b2^t) / (1 - b1^t)``
for ``wd`` it is ``p - step_size * u`` with DeepSpeed's ``u``. Either way the LAMB step is
``p - r * (p - p')``: run the fused AdamW kernel, then move each tensor back towards its old
value. That is one fused pass for the moments and a few cheap passes for the trust ratios, where
an op-by-op LAMB makes a dozen passes over every tensor: on CPU, where the optimiser is
memory-bound, timm's ``Lamb`` took longer than the model's backward at proxy sizes.

Moment state and checkpoints are AdamW's (``exp_avg``, ``exp_avg_sq``, per-parameter ``step``).

Under DeepSpeed ZeRO the optimizer steps flat partitions, not the model's tensors. A partition
registered with ``shard`` keeps LAMB per model parameter: each rank sums ``||p||^2`` and
``||u||^2`` over the pieces of each parameter it holds, one all-reduce adds the ranks' sums, and
every piece of a parameter is scaled by that parameter's (clamped) ratio, so the step equals the
unpartitioned one (``scaling/train/zero_layout.py`` reads the layout from DeepSpeed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class FlatLayout:
    """Where model parameters lie in a flat tensor the optimizer steps (one rank's partition).

    ``segments``: ``(index, start, end)``, elements ``start:end`` of the flat tensor belong to
    parameter ``index`` (``0 <= index < num_params``, the same numbering on every rank of
    ``group``). Elements in no segment (alignment padding) are left where they were.
    """

    segments: tuple[tuple[int, int, int], ...]
    num_params: int
    group: Any = None  # process group whose ranks hold the other pieces; None: the default one


RULES = ("deepspeed", "timm")
OPTIONS = ("rule", "max_coeff", "min_coeff", "trust_clip", "always_adapt")  # per group


class Lamb(torch.optim.AdamW):
    """LAMB by DeepSpeed's rule (every tensor, ratio clamped to ``[min_coeff, max_coeff]``) or
    timm's (``rule="timm"``: groups with weight decay, or all with ``always_adapt``; ``trust_clip``
    caps the ratio at 1). No gradient clipping of its own: the training loop clips the global
    norm before ``step``. Every option can also be set per parameter group.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, *, rule: str = "deepspeed",
                 max_coeff: float = 10.0, min_coeff: float = 0.01, trust_clip: bool = False,
                 always_adapt: bool = False, fused: bool | None = True) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         fused=fused, foreach=None if fused else True)
        for group in self.param_groups:
            for key, value in zip(OPTIONS, (rule, max_coeff, min_coeff, trust_clip, always_adapt), strict=True):
                group.setdefault(key, value)
            if group["rule"] not in RULES:
                raise ValueError(f"optim.lamb_rule: unknown LAMB rule {group['rule']!r}; use one of {RULES}")
            if not 0 < group["min_coeff"] <= group["max_coeff"]:
                raise ValueError(f"optim.lamb_min_coeff / optim.lamb_max_coeff: need 0 < min <= max, got "
                                 f"{group['min_coeff']} / {group['max_coeff']}")
        # Old values of the adapted tensors, reused every step (not state: never checkpointed).
        self._before: dict[torch.Tensor, torch.Tensor] = {}
        self._layouts: dict[torch.Tensor, FlatLayout] = {}
        self._piece_cache: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = {}

    def shard(self, flat: torch.Tensor, layout: FlatLayout) -> None:
        """Step ``flat`` (a partition of several parameters) with per-parameter trust ratios."""
        for index, start, end in layout.segments:
            if not (0 <= index < layout.num_params and 0 <= start <= end <= flat.numel()):
                raise ValueError(f"segment {(index, start, end)} outside a flat tensor of "
                                 f"{flat.numel()} elements holding {layout.num_params} parameters")
        self._layouts[flat] = layout
        self._piece_cache.pop(flat, None)

    def _adapted(self) -> list[tuple[dict, list[torch.Tensor]]]:
        out = []
        for group in self.param_groups:
            if group["rule"] == "deepspeed" or group["weight_decay"] != 0 or group["always_adapt"]:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    out.append((group, params))
        return out

    def _next_steps(self, groups: list[tuple[dict, list[torch.Tensor]]]) -> list[int]:
        """The step number each of ``groups`` is about to take (one host sync for all)."""
        counts = [[self.state[p]["step"] for p in params if "step" in self.state[p]] for _, params in groups]
        flat = [torch.as_tensor(c).detach().reshape(()).float() for cs in counts for c in cs]
        # AdamW keeps its step counts (float32, exact to 2^24) on the parameters' device.
        values = iter(torch.stack([c.to(flat[0].device) for c in flat]).tolist() if flat else [])
        out = []
        for (group, params), group_counts in zip(groups, counts, strict=True):
            taken = {int(next(values)) for _ in group_counts}
            if len(group_counts) < len(params):
                taken.add(0)  # tensors not stepped yet
            if len(taken) != 1:
                raise RuntimeError(f"LAMB group {group.get('name', '?')!r}: its tensors have taken "
                                   f"different numbers of steps {sorted(taken)} (some had no gradient "
                                   "on some steps); DeepSpeed's rule needs one step count per group")
            out.append(taken.pop() + 1)
        return out

    def _scales(self, adapted: list[tuple[dict, list[torch.Tensor]]]) -> tuple[list[float], list]:
        """Per adapted group, the factor ``s`` with ``p - p' = s * u``. Sets the DeepSpeed-rule
        groups' eps and weight decay so that AdamW's ``p'`` is DeepSpeed's step (the caller
        restores them)."""
        deepspeed = [a for a in adapted if a[0]["rule"] == "deepspeed"]
        steps = dict(zip([id(g) for g, _ in deepspeed], self._next_steps(deepspeed), strict=True))
        scales, saved = [], []
        for group, _ in adapted:
            if group["rule"] != "deepspeed":
                scales.append(group["lr"])
                continue
            t = steps[id(group)]
            beta1, beta2 = group["betas"]
            root2, bias1 = math.sqrt(1 - beta2**t), 1 - beta1**t
            saved.append((group, group["eps"], group["weight_decay"]))
            group["eps"] = group["eps"] / root2
            group["weight_decay"] = group["weight_decay"] * root2 / bias1
            scales.append(group["lr"] * root2 / bias1)
        return scales, saved

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        adapted = self._adapted()
        snapshots = []
        for _, params in adapted:
            before = [self._before.get(p) for p in params]
            for i, (p, b) in enumerate(zip(params, before, strict=True)):
                if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                    before[i] = self._before[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            torch._foreach_copy_(before, params)
            snapshots.append(before)

        scales, saved = self._scales(adapted)
        try:
            loss = super().step(closure)
        finally:
            for group, eps, weight_decay in saved:
                group["eps"], group["weight_decay"] = eps, weight_decay

        for (group, params), before, scale in zip(adapted, snapshots, scales, strict=True):
            if self._layouts:  # ZeRO partitions: every tensor stepped here must have its layout
                if any(p not in self._layouts for p in params):
                    raise RuntimeError("LAMB was given a flat partition it has no layout for; call "
                                       "shard() again after the engine replaces its partitions")
                for p, b in zip(params, before, strict=True):
                    self._step_flat(group, scale, p, b, self._layouts[p])
                continue
            w_norm = torch.stack(torch._foreach_norm(before))
            torch._foreach_sub_(before, params)  # before := p - p' = scale * u
            u_norm = torch.stack(torch._foreach_norm(before))
            ratio = self._ratio(group, scale, w_norm, u_norm)
            torch._foreach_mul_(before, list((1 - ratio).unbind()))  # the share of AdamW's move to undo
            torch._foreach_add_(params, before)
        return loss

    @staticmethod
    def _ratio(group: dict, scale: float, w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
        one = torch.ones_like(w_norm)
        # u_norm is ||scale * u||: scale * ||w|| / u_norm is ||w|| / ||u||.
        ratio = torch.where((w_norm > 0) & (u_norm > 0), scale * w_norm / u_norm, one)
        if group["rule"] == "deepspeed":
            return ratio.clamp(group["min_coeff"], group["max_coeff"])
        return torch.minimum(ratio, one) if group["trust_clip"] else ratio

    def _pieces(self, flat: torch.Tensor, before: torch.Tensor,
                layout: FlatLayout) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The parameter index of each piece (on the device) and the pieces as views of
        ``before``: built once per partition, not every step."""
        cached = self._piece_cache.get(flat)
        if cached is None or cached[0] is not before:
            index = torch.tensor([i for i, _, _ in layout.segments], dtype=torch.long, device=flat.device)
            cached = self._piece_cache[flat] = (before, index, [before[s:e] for _, s, e in layout.segments])
        return cached[1], cached[2]

    def _step_flat(self, group: dict, scale: float, flat: torch.Tensor, before: torch.Tensor,
                   layout: FlatLayout) -> None:
        index, pieces = self._pieces(flat, before, layout)
        sums = torch.zeros(2, layout.num_params, dtype=torch.float32, device=flat.device)
        if pieces:
            sums[0].index_add_(0, index, torch.stack(torch._foreach_norm(pieces)).float().square())
        before.sub_(flat)  # before := p - p' = scale * u, padding included
        if pieces:
            sums[1].index_add_(0, index, torch.stack(torch._foreach_norm(pieces)).float().square())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums, group=layout.group)  # every rank's pieces of every parameter
        ratio = self._ratio(group, scale, sums[0].sqrt(), sums[1].sqrt())
        if pieces:
            torch._foreach_mul_(pieces, list((1 - ratio[index]).to(before.dtype).unbind()))
        flat.add_(before)  # padding (in no piece) goes back to where it was

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints written by timm's Lamb keep one step count per group, AdamW one per tensor.
        state_dict = dict(state_dict)
        groups = state_dict.get("param_groups", [])
        per_param = dict(state_dict.get("state", {}))
        for group in groups:
            step = group.get("step")
            if step is None:
                continue
            for pid in group["params"]:
                if pid in per_param and "step" not in per_param[pid]:
                    per_param[pid] = {**per_param[pid], "step": torch.as_tensor(float(step))}
        state_dict["state"] = per_param
        # The LAMB options are the configured ones, not the checkpoint's (which may predate them).
        options = [{key: group[key] for key in OPTIONS} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, kept in zip(self.param_groups, options, strict=True):
            group.update(kept)
        self._before.clear()
        self._piece_cache.clear()  # its views hold the old buffers
