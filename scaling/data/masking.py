"""Block-wise masking for MIM, as in BEiT and EVA-02.

Rectangular blocks of random area and aspect ratio are added until the target number of patches
is covered; EVA-02's generator then pads (random unmasked patches) or trims (random masked ones)
so that every mask has *exactly* ``round(mask_ratio * N)`` patches, which keeps batches rectangular.
The minimum block (16 patches on BEiT's 14 x 14 grid) is scaled to the grid, so proxies with
4 x 4 or 8 x 8 patch grids still get blocks rather than a single rectangle.
"""

from __future__ import annotations

import math

import numpy as np

REFERENCE_PATCHES = 14 * 14  # the grid min_patches=16 was tuned for (224 px, patch 16)


class BlockMaskGenerator:
    """``gen(rng) -> bool[grid_h * grid_w]`` with exactly ``num_masked`` True entries."""

    def __init__(
        self,
        grid: tuple[int, int],
        mask_ratio: float = 0.4,
        min_patches: int = 16,
        max_patches: int | None = None,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
    ) -> None:
        self.height, self.width = (int(g) for g in grid)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"mask grid must be positive, got {tuple(grid)}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"aspect must satisfy 0 < low <= high, got {tuple(aspect)}")
        self.num_patches = self.height * self.width
        self.num_masked = int(round(mask_ratio * self.num_patches))
        scaled = min_patches * self.num_patches / REFERENCE_PATCHES
        self.min_patches = max(1, min(int(round(scaled)), self.num_masked))
        self.max_patches = (
            self.num_masked if max_patches is None else max(max_patches, self.min_patches)
        )
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), num_masked={self.num_masked}, "
            f"min_patches={self.min_patches}, max_patches={self.max_patches})"
        )

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """BEiT's step: up to 10 tries at a block that adds 1..budget new patches.

        The 40 uniforms of the 10 tries are drawn at once: numpy's per-call cost, not the
        arithmetic, dominated when each scalar was drawn alone.
        """
        lo, hi = self.min_patches, max(budget, self.min_patches)
        for u_area, u_aspect, u_top, u_left in rng.random((10, 4)).tolist():
            area = lo + (hi - lo) * u_area
            aspect = math.exp(
                self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * u_aspect
            )
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h <= self.height and 0 < w <= self.width:
                top = int(u_top * (self.height - h + 1))
                left = int(u_left * (self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(np.count_nonzero(block))
                if 0 < new <= budget:
                    block[:] = True
                    return new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masked:
            added = self._add_block(mask, min(self.num_masked - count, self.max_patches), rng)
            if added == 0:
                break
            count += added
        flat = mask.reshape(-1)
        # EVA-02: fix the count exactly (blocks can fall short when no block fits any more)
        if count < self.num_masked:
            free = np.flatnonzero(~flat)
            flat[rng.choice(free, self.num_masked - count, replace=False)] = True
        elif count > self.num_masked:
            taken = np.flatnonzero(flat)
            flat[rng.choice(taken, count - self.num_masked, replace=False)] = False
        return flat
