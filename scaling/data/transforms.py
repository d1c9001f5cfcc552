"""Image transforms: CLIP-style random resized crop for training, two eval modes, CLIP normalisation.

EVA-CLIP trains with random resized crop (0.9, 1) and EVA's MIM with (0.2, 1). For evaluation,
"resize + centre crop" and "direct resize" give different zero-shot numbers (EVA-CLIP-18B's
Table 14), so the mode is explicit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

# open_clip.constants.OPENAI_DATASET_MEAN / _STD, repeated here so that importing this module
# does not import open_clip (a test checks they agree)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EVAL_MODES = ("resize_center_crop", "resize")


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> ``float[3, H, W]`` normalised with the CLIP mean/std."""
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    return normalize_batch([arr])[0]


def stack_channels_first(images: list[np.ndarray], shared: bool | None = None) -> torch.Tensor:
    """Same-sized ``uint8[H, W, 3]`` arrays -> contiguous ``uint8[B, 3, H, W]``: what a loader
    worker ships (a quarter of the bytes of the float batch), normalised by the consumer.

    ``shared`` (default: when called in a loader worker) writes the batch straight into shared
    memory, as torch's ``default_collate`` does: otherwise the worker's queue thread copies it
    there while pickling, in parallel with the worker, which made one worker use ~1.2 cores."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    if shared is None:
        shared = torch.utils.data.get_worker_info() is not None
    if not shared:
        return x.contiguous()
    out = torch.empty(0, dtype=torch.uint8)
    out.set_(torch.UntypedStorage._new_shared(x.numel()), 0, x.shape)
    return out.copy_(x)


def normalize_batch(images: list[np.ndarray]) -> torch.Tensor:
    """Same-sized ``uint8[H, W, 3]`` arrays -> ``float[B, 3, H, W]`` with the CLIP mean/std.

    One pass over the batch instead of one per image: per 32 px image the tensor set-up cost
    more than the arithmetic (~60 us an image against ~20 batched)."""
    # channels first while still uint8 (a quarter of the bytes to move), then the float
    # arithmetic: at 224 px half the time of normalising channels last and permuting
    return normalize_on_device(stack_channels_first(images, shared=False))


_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]):
    key = (str(device), tuple(mean), tuple(std))
    if key not in _CONSTANTS:
        # computed on the CPU in float32 whatever the device, so every device subtracts and
        # divides by the same bits
        m = (torch.tensor(mean, dtype=torch.float32) * 255).view(3, 1, 1)
        s = (torch.tensor(std, dtype=torch.float32) * 255).view(3, 1, 1)
        _CONSTANTS[key] = (m.to(device), s.to(device))
    return _CONSTANTS[key]


def normalize_on_device(
    images: torch.Tensor,
    device: torch.device | str | None = None,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """``uint8[..., 3, H, W]`` -> ``float32`` ``(x - 255 mean) / (255 std)`` on ``device``
    (default: where ``images`` are), the model's input.

    The loader ships uint8 and the consumer calls this once a batch, after the copy to the
    accelerator: the main process receives a quarter of the bytes and does no float work per
    sample. The arithmetic is the float pipeline's (float32 subtract, then divide: both
    correctly rounded in IEEE float32 on CPU and CUDA), so the values are the same bits as
    ``normalize_batch``'s. Floating-point images are taken as already normalised (a transform
    that normalises, the eval sets) and only moved."""
    device = images.device if device is None else torch.device(device)
    if images.is_floating_point():
        return images.to(device, non_blocking=True)
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != len(mean):
        raise TypeError(
            f"normalize_on_device expects uint8 images [..., {len(mean)}, H, W] (a stream built "
            f"with train_transform(..., normalize=False)), got {images.dtype} {tuple(images.shape)}"
        )
    m, s = _constants(device, mean, std)
    return images.to(device, non_blocking=True).float().sub_(m).div_(s)


class RandomResizedCrop:
    """torchvision's RandomResizedCrop (same sampling: 10 tries at an area in ``scale`` and a
    log-uniform aspect in ``ratio``, else a centre crop), bicubic, then CLIP normalisation, or
    with ``normalize=False`` the crop as ``uint8[3, S, S]`` for ``normalize_on_device`` to
    finish where the batch is consumed.

    Written with Python's ``random`` and one PIL resize: torchvision's version draws each scalar
    as a torch tensor and took ~1 ms per 32 px image, more than decoding it.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        normalize: bool = True,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.normalize = bool(normalize)

    def __repr__(self) -> str:
        out = "CLIP mean/std" if self.normalize else "uint8, normalised by the consumer"
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, bicubic, {out})"

    # ShardStream passes its per-sample generator instead of seeding the global one
    accepts_rng = True

    def params(self, width: int, height: int, rng: random.Random | None = None) -> tuple[int, int, int, int]:
        """(left, top, w, h) of the crop; draws from ``rng`` (default: the global ``random``)."""
        rng = rng or random  # the module draws from the global generator
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def crop(self, img: Image.Image | np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        """The crop, resized, as ``uint8[S, S, 3]``: the per-image half of ``__call__``; ``img``
        a PIL image or an RGB ``uint8[H, W, 3]`` array (``scaling.data.decode.decode_rgb``)."""
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        img = img.convert("RGB") if img.mode != "RGB" else img
        left, top, w, h = self.params(*img.size, rng=rng)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        # via tobytes: np.asarray goes through __array_interface__, ~4 us more an image
        return np.frombuffer(out.tobytes(), np.uint8).reshape(self.size, self.size, 3)

    def collate(self, crops: list[np.ndarray]) -> torch.Tensor:
        """The batch half (a stream that sees ``crop`` and ``collate`` builds a batch at once):
        ``float[B, 3, S, S]`` normalised, or with ``normalize=False`` ``uint8[B, 3, S, S]``."""
        return normalize_batch(crops) if self.normalize else stack_channels_first(crops)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return self.collate([self.crop(img, rng)])[0]


def train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0),
                    normalize: bool = True) -> Callable:
    """PIL image -> normalised ``float[3, S, S]``: random resized crop (bicubic), CLIP mean/std;
    ``normalize=False``: ``uint8[3, S, S]``, for ``normalize_on_device`` in the consumer.
    Randomness: the ``rng`` given (``ShardStream`` passes each sample's own), else Python's ``random``."""
    return RandomResizedCrop(image_size, scale, normalize=normalize)


class EvalTransform:
    """Deterministic resize for evaluation, then CLIP normalisation."""

    def __init__(self, size: int, mode: str = "resize_center_crop") -> None:
        if mode not in EVAL_MODES:
            raise ValueError(f"unknown eval transform mode {mode!r}; choose from {EVAL_MODES}")
        self.size, self.mode = int(size), mode

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, mode={self.mode!r}, bicubic, CLIP mean/std)"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB") if img.mode != "RGB" else img
        s = self.size
        if self.mode == "resize":
            return to_normalized_tensor(img.resize((s, s), Image.BICUBIC))
        # shorter side to s (as torchvision's Resize(int) rounds), then the centre s x s
        width, height = img.size
        scale = s / min(width, height)
        new_w, new_h = max(s, int(width * scale)), max(s, int(height * scale))
        img = (
            img.resize((new_w, new_h), Image.BICUBIC) if (new_w, new_h) != (width, height) else img
        )
        left, top = int(round((new_w - s) / 2.0)), int(round((new_h - s) / 2.0))
        return to_normalized_tensor(img.crop((left, top, left + s, top + s)))


def eval_transform(image_size: int, mode: str = "resize_center_crop") -> Callable:
    """PIL image -> normalised ``float[3, S, S]``; ``mode`` 'resize_center_crop' (shorter side to S,
    then the centre S x S) or 'resize' (straight to S x S, aspect not kept)."""
    return EvalTransform(image_size, mode)
