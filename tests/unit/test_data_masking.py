"""Block-wise masking: EVA-02's generator (BEiT's MaskingGenerator) and its parameters, the exact
count, determinism, block shape, grid scaling."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import ndimage

from scaling.data.masking import BlockMaskGenerator

EVA02 = {"grid": (16, 16), "mask_ratio": 105 / 256, "min_patches": 16}  # asuka: 224 px / 14, 105 masked


def beit_masks(n: int, seed: int, height=16, width=16, num_masked=105, min_patches=16,
               aspect=(0.3, 1 / 0.3)) -> np.ndarray:
    """BEiT's block-wise masking (BEiT, Algorithm 1; EVA-02's MaskingGenerator) written out with
    Python's ``random``, independently of the generator under test: the reference."""
    rnd = random.Random(seed)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    out = np.zeros((n, height, width), dtype=bool)
    for mask in out:
        count = 0
        while count < num_masked:
            budget, delta = num_masked - count, 0
            for _ in range(10):
                area = rnd.uniform(min_patches, budget)
                ratio = math.exp(rnd.uniform(*log_aspect))
                h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
                if w < width and h < height:
                    top, left = rnd.randint(0, height - h), rnd.randint(0, width - w)
                    new = h * w - int(mask[top : top + h, left : left + w].sum())
                    if 0 < new <= budget:
                        mask[top : top + h, left : left + w] = True
                        delta = new
                if delta > 0:
                    break
            if delta == 0:
                break
            count += delta
    return out.reshape(n, -1)


def test_eva02_parameters():
    gen = BlockMaskGenerator(**EVA02)
    assert (gen.num_patches, gen.num_masked, gen.min_patches, gen.max_patches) == (256, 105, 16, 105)
    assert gen.log_aspect == pytest.approx((math.log(0.3), math.log(1 / 0.3)))


def test_statistics_match_beits_generator_at_eva02s_parameters():
    n = 1500
    gen = BlockMaskGenerator(**EVA02, top_up=False)
    rng = np.random.default_rng(0)
    ours, blocks = [], []
    for _ in range(n):
        ours.append(gen(rng))
        blocks.append(list(gen.blocks))
    ours = np.stack(ours)
    ref = beit_masks(n, seed=1)
    # masked count: never above 105, the same mean (and shortfall rate) as the reference
    for masks in (ours, ref):
        assert masks.sum(1).max() <= 105
    count, ref_count = ours.sum(1), ref.sum(1)
    se = math.sqrt(count.var() / n + ref_count.var() / n)
    assert abs(count.mean() - ref_count.mean()) < 4 * se + 1e-9
    assert abs((count < 105).mean() - (ref_count < 105).mean()) < 0.06
    # blocks per mask and block sizes
    components = [ndimage.label(m.reshape(16, 16))[1] for m in ours]
    ref_components = [ndimage.label(m.reshape(16, 16))[1] for m in ref]
    assert abs(np.mean(components) - np.mean(ref_components)) < 0.15
    # where masks fall: the per-patch frequency map agrees (centre patches masked more often)
    freq, ref_freq = ours.mean(0), ref.mean(0)
    assert np.abs(freq - ref_freq).mean() < 0.03
    assert freq.reshape(16, 16)[6:10, 6:10].mean() > freq.reshape(16, 16)[0].mean()
    # each block obeys the generator's parameters: strictly inside the grid, the first block's
    # area drawn from [16, 105], aspect within [0.3, 1/0.3] up to rounding, new patches <= budget
    first = np.array([b[0][0] * b[0][1] for b in blocks])
    for mask_blocks in blocks:
        for h, w, new, budget in mask_blocks:
            assert 1 <= h < 16 and 1 <= w < 16 and 0 < new <= budget <= 105
    assert first.min() >= 12 and first.max() <= 105 + 15  # rounding of h and w
    ratios = np.array([b[0][0] / b[0][1] for b in blocks])
    assert ratios.min() >= 0.3 * 0.6 and ratios.max() <= 1 / (0.3 * 0.6)


@pytest.mark.parametrize(
    "grid,ratio", [((14, 14), 0.4), ((16, 16), 105 / 256), ((4, 4), 0.4), ((8, 8), 0.5), ((7, 9), 0.3)]
)
def test_exactly_round_ratio_times_n_patches(grid, ratio):
    gen = BlockMaskGenerator(grid, mask_ratio=ratio)
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    for _ in range(50):
        m = gen(rng)
        assert m.dtype == bool and m.shape == (n,)
        assert int(m.sum()) == round(ratio * n)


def test_top_up_is_rare_and_small_at_eva02s_parameters():
    """The one departure from BEiT's generator: shortfalls are topped up with random patches."""
    gen = BlockMaskGenerator(**EVA02, top_up=False)
    rng = np.random.default_rng(3)
    short = np.array([105 - gen(rng).sum() for _ in range(1000)])
    assert short.min() >= 0 and short.mean() < 1.5  # under 1.5 % of the masked patches


def test_deterministic_by_seed():
    gen = BlockMaskGenerator((14, 14))
    a = [gen(np.random.default_rng(7)) for _ in range(3)]
    b = [gen(np.random.default_rng(7)) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    rng = np.random.default_rng(7)
    seq = [gen(rng).tobytes() for _ in range(20)]
    assert len(set(seq)) == 20  # a stream of different masks


def test_masks_are_blocks_not_scattered_patches():
    gen = BlockMaskGenerator(**EVA02)
    rng = np.random.default_rng(1)
    blocky = [ndimage.label(gen(rng).reshape(16, 16))[1] for _ in range(100)]
    scattered = [ndimage.label((rng.permutation(256) < 105).reshape(16, 16))[1] for _ in range(100)]
    # 105 patches in a few connected blocks, versus dozens of islands for uniform masking
    assert np.mean(blocky) < 6 < np.mean(scattered)
    largest = [
        np.bincount(ndimage.label(gen(rng).reshape(16, 16))[0].ravel())[1:].max() for _ in range(50)
    ]
    assert np.median(largest) >= 16


def test_min_block_scales_to_small_grids_only():
    assert BlockMaskGenerator((16, 16)).min_patches == 16
    assert BlockMaskGenerator((32, 32)).min_patches == 16  # 448 px: EVA-02's value, unscaled
    small = BlockMaskGenerator((4, 4))
    assert small.min_patches == 1 and small.num_masked == 6
    assert BlockMaskGenerator((8, 8)).min_patches == 4


@pytest.mark.parametrize(
    "kwargs",
    [{"grid": (0, 4)}, {"grid": (4, 4), "mask_ratio": 1.0}, {"grid": (4, 4), "aspect": (2.0, 1.0)},
     {"grid": (4, 4), "min_patches": 0}],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        BlockMaskGenerator(**kwargs)
