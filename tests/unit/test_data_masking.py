"""Block-wise masking: exact ratio, determinism, block shape, grid scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from scaling.data.masking import BlockMaskGenerator


@pytest.mark.parametrize(
    "grid,ratio", [((14, 14), 0.4), ((16, 16), 0.4), ((4, 4), 0.4), ((8, 8), 0.5), ((7, 9), 0.3)]
)
def test_exactly_round_ratio_times_n_patches(grid, ratio):
    gen = BlockMaskGenerator(grid, mask_ratio=ratio)
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    for _ in range(50):
        m = gen(rng)
        assert m.dtype == bool and m.shape == (n,)
        assert int(m.sum()) == round(ratio * n)


def test_deterministic_by_seed():
    gen = BlockMaskGenerator((14, 14))
    a = [gen(np.random.default_rng(7)) for _ in range(3)]
    b = [gen(np.random.default_rng(7)) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    rng = np.random.default_rng(7)
    seq = [gen(rng).tobytes() for _ in range(20)]
    assert len(set(seq)) == 20  # a stream of different masks


def test_masks_are_blocks_not_scattered_patches():
    gen = BlockMaskGenerator((14, 14))
    rng = np.random.default_rng(1)
    blocky = [ndimage.label(gen(rng).reshape(14, 14))[1] for _ in range(100)]
    scattered = [ndimage.label((rng.permutation(196) < 78).reshape(14, 14))[1] for _ in range(100)]
    # 78 patches in a few connected blocks, versus dozens of islands for uniform masking
    assert np.mean(blocky) < 6 < np.mean(scattered)
    # and each block is a union of rectangles of at least min_patches: the largest region is big
    largest = [
        np.bincount(ndimage.label(gen(rng).reshape(14, 14))[0].ravel())[1:].max() for _ in range(50)
    ]
    assert np.median(largest) >= 16


def test_min_block_scales_to_small_grids():
    assert BlockMaskGenerator((14, 14)).min_patches == 16
    small = BlockMaskGenerator((4, 4))
    assert 1 <= small.min_patches <= small.num_masked == 6
    assert BlockMaskGenerator((28, 28)).min_patches == 64


@pytest.mark.parametrize(
    "kwargs",
    [{"grid": (0, 4)}, {"grid": (4, 4), "mask_ratio": 1.0}, {"grid": (4, 4), "aspect": (2.0, 1.0)}],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        BlockMaskGenerator(**kwargs)
