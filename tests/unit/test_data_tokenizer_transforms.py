"""Tokenizer and transforms: shapes, constants shared with open_clip, seeded randomness."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from scaling.data.tokenizer import get_tokenizer
from scaling.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    eval_transform,
    normalize_on_device,
    stack_channels_first,
    train_transform,
)


def test_tokenizer_shape_and_special_tokens():
    tok = get_tokenizer(16)
    ids = tok(["a red circle.", "x " * 40])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    sot, eot = 49406, 49407
    assert ids[0, 0] == sot and eot in ids[0].tolist() and ids[0, -1] == 0
    assert ids[1, -1] == eot  # cut texts keep their end token
    assert torch.equal(tok(["A Red Circle."]), tok(["a red circle."]))
    assert get_tokenizer(77)(["hi"]).shape == (1, 77)
    with pytest.raises(ValueError):
        get_tokenizer(1)


def test_normalisation_constants_are_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)) == (CLIP_MEAN, CLIP_STD)


def _gradient() -> Image.Image:
    img = Image.new("RGB", (48, 48))
    img.putdata([(x * 5, y * 5, 128) for y in range(48) for x in range(48)])
    return img


def test_train_transform_is_seeded_by_python_random():
    t = train_transform(16, scale=(0.2, 1.0))
    img = _gradient()
    random.seed(3)
    a = t(img)
    random.seed(3)
    b = t(img)
    c = t(img)
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


def test_crop_scale_bounds_the_crop_area():
    t = train_transform(16, scale=(0.2, 0.3))
    random.seed(0)
    for _ in range(50):
        left, top, w, h = t.params(100, 100)
        assert 0.15 * 10000 <= w * h <= 0.35 * 10000
        assert 0 <= left <= 100 - w and 0 <= top <= 100 - h
    with pytest.raises(ValueError):
        train_transform(16, scale=(0.5, 0.2))


def test_eval_transform_modes():
    img = Image.new("L", (30, 20), 255)
    for mode in ("resize_center_crop", "resize"):
        x = eval_transform(8, mode)(img)
        assert x.shape == (3, 8, 8)
        assert torch.allclose(
            x[:, 0, 0], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD), atol=1e-4
        )
    with pytest.raises(ValueError, match="resize_center_crop"):
        eval_transform(8, "crop")


def test_tokenizer_matches_open_clip_exactly():
    from open_clip.tokenizer import SimpleTokenizer

    from scaling.data.synth import make_sample

    texts = [make_sample("train", 0, i, 16)[1] for i in range(100)]
    texts += [
        "Tom &amp; Jerry",
        "café crème",
        "a\tb  c",
        "  A  B ",
        "x &lt;y&gt;",
        "ＦＵＬＬ width",
        "line\nbreak",
        "quote “curly”",
        "it's 3.5 o'clock!!",
        "word " * 40,
    ]
    assert torch.equal(get_tokenizer(24)(texts), SimpleTokenizer(context_length=24)(texts))


def test_train_transform_halves_give_the_whole():
    import numpy as np

    t = train_transform(16, scale=(0.2, 1.0))
    img = _gradient()
    arr = np.asarray(img)
    crops = [t.crop(img, random.Random(i)) for i in range(3)]
    assert all(c.shape == (16, 16, 3) and c.dtype == np.uint8 for c in crops)
    assert np.array_equal(t.crop(arr, random.Random(0)), crops[0])  # arrays as PIL images
    batch = t.collate(crops)
    assert batch.shape == (3, 3, 16, 16) and batch.is_contiguous()
    for i in range(3):
        assert torch.equal(batch[i], t(img, rng=random.Random(i)))


def test_uint8_crops_normalised_by_the_consumer_are_the_float_ones():
    import numpy as np

    t, raw = train_transform(16, scale=(0.2, 1.0)), train_transform(16, scale=(0.2, 1.0), normalize=False)
    crops = [t.crop(_gradient(), random.Random(i)) for i in range(4)]
    batch = raw.collate(crops)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 16, 16) and batch.is_contiguous()
    assert torch.equal(batch, stack_channels_first(crops))
    # the same bits as the float pipeline: float32 (x - 255 mean) / (255 std), constants in float32
    mean255 = (torch.tensor(CLIP_MEAN) * 255).view(3, 1, 1)
    std255 = (torch.tensor(CLIP_STD) * 255).view(3, 1, 1)
    expected = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().sub(mean255).div(std255)
    assert torch.equal(normalize_on_device(batch), expected)
    assert torch.equal(normalize_on_device(batch), t.collate(crops))
    assert torch.equal(normalize_on_device(raw(_gradient(), rng=random.Random(1))),
                       t(_gradient(), rng=random.Random(1)))
    assert torch.equal(normalize_on_device(expected, "cpu"), expected)  # already normalised: only moved
    with pytest.raises(TypeError, match="uint8 images"):
        normalize_on_device(batch.long())
    with pytest.raises(TypeError, match="uint8 images"):
        normalize_on_device(batch.permute(0, 2, 3, 1).contiguous())  # channels last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalising_on_the_gpu_gives_the_cpu_bits():
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    on_gpu = normalize_on_device(batch.pin_memory(), "cuda")
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), normalize_on_device(batch))
