"""Block-wise masking for MIM: EVA-02's generator (BEiT's ``MaskingGenerator``).

Rectangular blocks are added until ``num_masked`` patches are covered. Each block draws its area
uniformly between ``min_patches`` and the patches still to mask (in either order, like
``random.uniform``), its aspect ratio log-uniformly in ``aspect``, and its corner uniformly;
it must be strictly smaller than the grid in both directions (the generator's ``<`` bounds) and
add between 1 and the remaining budget of new patches, or it is redrawn (10 tries). EVA-02
(``EVA-02/asuka``: ``--num_mask_patches 105``, ``--min_mask_patches_per_block 16``, max None)
masks 105 of the 256 patches at 224 px / patch 14; set ``loss.mask_ratio: 105/256`` for that.

One departure: when no block fits any more, BEiT's generator stops short of ``num_masked``; here
the mask is topped up with random free patches so that every mask has exactly ``num_masked``
patches. Every micro-batch then weighs the loss alike (gradient accumulation equals the full
batch). At 16 x 16 / 105 the top-up is rare and small (``tests/unit/test_data_masking.py``
measures it). The minimum block (16 patches on EVA-02's 16 x 16 grid) is scaled to smaller
grids, so proxies with 4 x 4 or 8 x 8 patch grids still get several blocks.
"""

from __future__ import annotations

import math

import numpy as np

REFERENCE_PATCHES = 16 * 16  # the grid EVA-02's min_patches=16 goes with (224 px, patch 14)


class BlockMaskGenerator:
    """``gen(rng) -> bool[grid_h * grid_w]`` with exactly ``num_masked`` True entries
    (``top_up=False``: at most ``num_masked``, as BEiT's generator returns them)."""

    def __init__(
        self,
        grid: tuple[int, int],
        mask_ratio: float = 0.4,
        min_patches: int = 16,
        max_patches: int | None = None,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        *,
        top_up: bool = True,
    ) -> None:
        self.height, self.width = (int(g) for g in grid)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"mask grid must be positive, got {tuple(grid)}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"loss.mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"aspect must satisfy 0 < low <= high, got {tuple(aspect)}")
        if min_patches < 1:
            raise ValueError(f"loss.min_mask_patches must be >= 1, got {min_patches}")
        self.num_patches = self.height * self.width
        self.num_masked = int(round(mask_ratio * self.num_patches))
        scaled = min_patches * min(1.0, self.num_patches / REFERENCE_PATCHES)
        self.min_patches = max(1, int(round(scaled)))
        self.max_patches = self.num_masked if max_patches is None else max_patches
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.top_up = top_up
        self.blocks: list[tuple[int, int, int, int]] = []  # (h, w, new patches, budget) of the last mask

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), num_masked={self.num_masked}, "
            f"min_patches={self.min_patches}, max_patches={self.max_patches}, top_up={self.top_up})"
        )

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """BEiT's step: up to 10 tries at a block that adds 1..budget new patches.

        The 40 uniforms of the 10 tries are drawn at once: numpy's per-call cost, not the
        arithmetic, dominated when each scalar was drawn alone.
        """
        lo = self.min_patches
        for u_area, u_aspect, u_top, u_left in rng.random((10, 4)).tolist():
            area = lo + (budget - lo) * u_area  # random.uniform(lo, budget), also when budget < lo
            aspect = math.exp(
                self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * u_aspect
            )
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top = int(u_top * (self.height - h + 1))  # randint(0, height - h)
                left = int(u_left * (self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(np.count_nonzero(block))
                if 0 < new <= budget:
                    block[:] = True
                    self.blocks.append((h, w, new, budget))
                    return new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        self.blocks = []
        count = 0
        while count < self.num_masked:
            added = self._add_block(mask, min(self.num_masked - count, self.max_patches), rng)
            if added == 0:
                break
            count += added
        flat = mask.reshape(-1)
        if self.top_up and count < self.num_masked:
            free = np.flatnonzero(~flat)
            flat[rng.choice(free, self.num_masked - count, replace=False)] = True
        return flat


def mask_generator(cfg, grid: int) -> BlockMaskGenerator:
    """The stage's MIM masks (``loss.mask_ratio``, ``loss.min_mask_patches``) on a ``grid`` x ``grid``
    patch grid: one definition for the train stream and the MIM eval."""
    return BlockMaskGenerator((grid, grid), mask_ratio=cfg.loss.mask_ratio,
                              min_patches=cfg.loss.min_mask_patches)
