"""Zero-shot evaluation sets for evaluation inside a stage: ``scaling.data.evalsets``'s sets (it
reads the layouts: ImageFolder, clip_benchmark webdataset, the synthetic world's
``captions.jsonl``; class names and prompt templates), cut to an evenly spaced subset
(``eval.max_samples``) and decoded once, so that a stage evaluating every few thousand samples
does not decode the same images again.
"""

from __future__ import annotations

from pathlib import Path

from scaling.data import evalsets
from scaling.data.errors import DataError
from scaling.data.evalsets import ClassificationSet, RetrievalSet

EvalSetError = DataError  # what a bad eval set raises (names the folder and what it expected)

__all__ = ["ClassificationSet", "EvalSetError", "RetrievalSet", "load_classification", "load_retrieval"]


def load_classification(root: str | Path, image_size: int, mode: str = "resize_center_crop",
                        max_samples: int | None = None) -> ClassificationSet:
    return evalsets.load_classification(root, image_size, mode).subset(max_samples)


def load_retrieval(root: str | Path, image_size: int, mode: str = "resize_center_crop",
                   max_samples: int | None = None) -> RetrievalSet:
    return evalsets.load_retrieval(root, image_size, mode).subset(max_samples)
