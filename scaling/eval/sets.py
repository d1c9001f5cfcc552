"""Zero-shot evaluation sets as in-memory tensors, for evaluation inside a stage.

Reading the layouts (ImageFolder, clip_benchmark webdataset, the synthetic world's
``captions.jsonl``; class names and prompt templates) is ``scaling.data.evalsets``'s job; this
module takes an evenly spaced subset (``eval.max_samples``) and decodes it once, so that a stage
evaluating every few thousand samples does not decode the same images again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from scaling.data import evalsets
from scaling.data.errors import DataError

EvalSetError = DataError  # what a bad eval set raises (names the folder and what it expected)


@dataclass
class ClassificationSet:
    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]
    templates: list[str]


@dataclass
class RetrievalSet:
    images: torch.Tensor
    captions: list[list[str]]


def _subsample(n: int, limit: int | None) -> list[int]:
    """Evenly spaced indices (every class keeps samples in a class-sorted folder)."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted({int(i * n / limit) for i in range(limit)})


def load_classification(root: str | Path, image_size: int, mode: str = "resize_center_crop",
                        max_samples: int | None = None) -> ClassificationSet:
    data = evalsets.load_classification(root, image_size, mode)
    keep = _subsample(len(data), max_samples)
    return ClassificationSet(torch.stack([data.source[i] for i in keep]), data.labels[keep],
                             list(data.classnames), list(data.templates))


def load_retrieval(root: str | Path, image_size: int, mode: str = "resize_center_crop",
                   max_samples: int | None = None) -> RetrievalSet:
    data = evalsets.load_retrieval(root, image_size, mode)
    keep = _subsample(len(data), max_samples)
    return RetrievalSet(torch.stack([data.source[i] for i in keep]), [data.captions[i] for i in keep])
