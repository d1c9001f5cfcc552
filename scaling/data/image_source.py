"""Eval-set images by index, read from files or from members of tar shards (no extraction)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from scaling.data.errors import DataError


class ImageSource(torch.utils.data.Dataset):
    """Images by index, from files or from ``(tar path, offset, size)`` members, transformed."""

    def __init__(self, items: Sequence[str | tuple[str, int, int]], transform: Callable) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> Image.Image:
        item = self.items[i]
        try:
            if isinstance(item, tuple):
                path, offset, size = item
                with open(path, "rb") as f:
                    f.seek(offset)
                    img = Image.open(io.BytesIO(f.read(size)))
            else:
                img = Image.open(item)
            img.load()
        except Exception as exc:
            raise DataError(f"cannot read image {item}: {type(exc).__name__}: {exc}") from exc
        return img

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.read(i))
