"""LAMB on top of torch's fused AdamW kernel.

LAMB (You et al., 2019, in the NVLAMB form timm's ``Lamb`` uses: bias-corrected Adam moments,
L2 weight decay added to the update, trust ratio only where weight decay applies) moves a
parameter ``p`` by ``lr * r * u`` with ``u = m_hat / (sqrt(v_hat) + eps) + wd * p`` and
``r = ||p|| / ||u||``. AdamW's step at the same lr is ``p' = p - lr * u`` exactly, so the LAMB
step is ``p - r * (p - p')``: run the fused AdamW kernel, then move each adapted tensor back
towards its old value. That is one fused pass for the moments and a few cheap passes for the
trust ratios, where an op-by-op LAMB makes a dozen passes over every tensor: on CPU, where the
optimiser is memory-bound, timm's ``Lamb`` took longer than the model's backward at proxy sizes.

Moment state and checkpoints are AdamW's (``exp_avg``, ``exp_avg_sq``, per-parameter ``step``).

Under DeepSpeed ZeRO the optimizer steps flat partitions, not the model's tensors. A partition
registered with ``shard`` keeps LAMB per model parameter: each rank sums ``||p||^2`` and
``||u||^2`` over the pieces of each parameter it holds, one all-reduce adds the ranks' sums, and
every piece of a parameter is scaled by that parameter's ratio, so the step equals the
unpartitioned one (``scaling/train/zero_layout.py`` reads the layout from DeepSpeed).
"""

from __future__ import annotations

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


class Lamb(torch.optim.AdamW):
    """LAMB with the trust ratio applied to groups with weight decay (or all, ``always_adapt``).

    ``trust_clip`` caps the ratio at 1 (LAMBC). No gradient clipping of its own: the training
    loop clips the global norm before ``step``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, *, trust_clip: bool = False,
                 always_adapt: bool = False, fused: bool | None = True) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         fused=fused, foreach=None if fused else True)
        for group in self.param_groups:
            group.setdefault("trust_clip", trust_clip)
            group.setdefault("always_adapt", always_adapt)
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
            if group["weight_decay"] != 0 or group["always_adapt"]:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    out.append((group, params))
        return out

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

        loss = super().step(closure)

        for (group, params), before in zip(adapted, snapshots, strict=True):
            if self._layouts:  # ZeRO partitions: every tensor stepped here must have its layout
                if any(p not in self._layouts for p in params):
                    raise RuntimeError("LAMB was given a flat partition it has no layout for; call "
                                       "shard() again after the engine replaces its partitions")
                for p, b in zip(params, before, strict=True):
                    self._step_flat(group, p, b, self._layouts[p])
                continue
            w_norm = torch.stack(torch._foreach_norm(before))
            torch._foreach_sub_(before, params)  # before := p - p' = lr * u
            u_norm = torch.stack(torch._foreach_norm(before))
            ratio = self._ratio(group, w_norm, u_norm)
            torch._foreach_mul_(before, list((1 - ratio).unbind()))  # the share of AdamW's move to undo
            torch._foreach_add_(params, before)
        return loss

    @staticmethod
    def _ratio(group: dict, w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
        one = torch.ones_like(w_norm)
        # u_norm is ||lr * u||: lr * ||w|| / u_norm is ||w|| / ||u||.
        ratio = torch.where((w_norm > 0) & (u_norm > 0), group["lr"] * w_norm / u_norm, one)
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

    def _step_flat(self, group: dict, flat: torch.Tensor, before: torch.Tensor, layout: FlatLayout) -> None:
        index, pieces = self._pieces(flat, before, layout)
        sums = torch.zeros(2, layout.num_params, dtype=torch.float32, device=flat.device)
        if pieces:
            sums[0].index_add_(0, index, torch.stack(torch._foreach_norm(pieces)).float().square())
        before.sub_(flat)  # before := p - p' = lr * u, padding included
        if pieces:
            sums[1].index_add_(0, index, torch.stack(torch._foreach_norm(pieces)).float().square())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums, group=layout.group)  # every rank's pieces of every parameter
        ratio = self._ratio(group, sums[0].sqrt(), sums[1].sqrt())
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
        super().load_state_dict(state_dict)
        self._before.clear()
        self._piece_cache.clear()  # its views hold the old buffers
