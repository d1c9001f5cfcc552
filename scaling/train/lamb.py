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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


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
            w_norm = torch.stack(torch._foreach_norm(before))
            torch._foreach_sub_(before, params)  # before := p - p' = lr * u
            u_norm = torch.stack(torch._foreach_norm(before))
            one = torch.ones_like(w_norm)
            ratio = torch.where((w_norm > 0) & (u_norm > 0), group["lr"] * w_norm / u_norm, one)
            if group["trust_clip"]:
                ratio = torch.minimum(ratio, one)
            torch._foreach_mul_(before, list((one - ratio).unbind()))  # the share of AdamW's move to undo
            torch._foreach_add_(params, before)
        return loss

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
