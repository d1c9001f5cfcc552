"""A running stage moves to another image size (a phase's ``image_size``): the trained tower's
position table is resampled to the new patch grid, its RoPE tables follow, the frozen MIM teacher
is fed images of the matching size, and the optimizer's moments of the position table are
resampled with it.

The moments are resampled, not reset: each new grid position starts from the moments of the old
positions it interpolates, as its weight does. ``exp_avg`` is resampled like the weight (the
interpolation is linear, so it is the interpolated mean gradient); ``exp_avg_sq`` through its
square root, which keeps it non-negative (bicubic weights can be negative) and keeps each
position's Adam denominator at the scale of its neighbours'. Reset moments with the stage's step
count would leave Adam's bias correction at ~1 for averages restarted from zero: the table's
first step after the boundary would be (1 - b1) / sqrt(1 - b2) lr x sign(g) at every position
(0.71 lr at the recipes' b2 = 0.98), larger than the steps that noisy gradients give it later.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

SQUARED_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


def _resample(table: torch.Tensor, old_grid: int, new_grid: int, prefix: int) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(table, (new_grid, new_grid), old_size=(old_grid, old_grid),
                                  num_prefix_tokens=prefix)


def move_optimizer_state(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter,
                         old_grid: int, new_grid: int, prefix: int) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer`` (same group, same index, so checkpoints keep
    their numbering) with ``old``'s moments resampled to ``new_grid``."""
    found = False
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                found = True
    if not found:
        raise RuntimeError("the position table being resampled is not in the optimizer")
    getattr(optimizer, "_before", {}).pop(old, None)  # LAMB's per-tensor scratch copies
    state = optimizer.state.pop(old, None)
    if not state:
        return
    moved = {}
    with torch.no_grad():
        for key, value in state.items():
            if not (torch.is_tensor(value) and value.shape == old.shape):
                moved[key] = value  # the step count
            elif key in SQUARED_MOMENTS:
                moved[key] = _resample(value.sqrt(), old_grid, new_grid, prefix).square().contiguous()
            else:
                moved[key] = _resample(value, old_grid, new_grid, prefix).contiguous()
    optimizer.state[new] = moved


def set_tower_image_size(tower, image_size: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
    """Move an ``EvaVisionTower`` (and, given, its optimizer) to ``image_size``; True if it changed."""
    old_grid = tower.spec.grid
    if image_size == tower.spec.image_size:
        return False
    swapped = tower.set_image_size(image_size)
    if swapped is not None and optimizer is not None:
        move_optimizer_state(optimizer, *swapped, old_grid, tower.spec.grid, tower.trunk.num_prefix_tokens)
    return True


def set_teacher_grid(teacher, student_grid: int) -> None:
    """Feed the frozen teacher images that give it the student's token grid (patch sizes may
    differ); its table is resampled from its checkpoint's (``source_pos_embed``, when kept)."""
    set_tower_image_size(teacher, student_grid * teacher.spec.patch_size)
    source = getattr(teacher, "source_pos_embed", None)
    table = teacher.trunk.pos_embed
    if source is not None and table is not None and source.shape[-1] == table.shape[-1]:
        from timm.layers import resample_abs_pos_embed

        with torch.no_grad():
            table.copy_(resample_abs_pos_embed(source.to(table), (student_grid, student_grid),
                                               num_prefix_tokens=teacher.trunk.num_prefix_tokens))
