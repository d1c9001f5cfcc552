"""Evaluation inside a stage: the held-out sets, loaded once, and the evaluations a stage kind
picks (``scaling.train.kinds``): zero-shot classification/retrieval for CLIPs, held-out loss for MIM."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from scaling.data.masking import mask_generator
from scaling.data.transforms import normalize_on_device
from scaling.eval import sets
from scaling.eval.zeroshot import classification, retrieval, text_classifier
from scaling.models.losses import mim_loss, teacher_targets
from scaling.stages import MIM_EVAL_METRIC
from scaling.stages import eval_set_name as set_name

log = logging.getLogger(__name__)

MIM_EVAL_SAMPLES = 256  # held-out images for eval/mim/loss (fixed masks), unless eval.max_samples


def _batches(tensors: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(tensors), size):
        yield tensors[i : i + size]


@dataclass
class StageEvaluator:
    """Loads the held-out sets once; ``__call__(model, rank, all_ranks)`` returns ``eval/...`` metrics
    on rank 0 from ``evaluate(self, model)`` (the stage kind's evaluation, e.g. :func:`zero_shot`).
    With ``all_ranks`` (ZeRO-3: parameters are gathered collectively) every rank runs."""

    cfg: DictConfig
    sources: Any  # train.stage_data.StageData: where the held-out sets are
    image_size: int
    grid: int
    tokenizer: Any
    device: torch.device
    evaluate: Callable[[StageEvaluator, torch.nn.Module], dict[str, float]]
    teacher: torch.nn.Module | None = None
    teacher_image_size: int | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def batch(self) -> int:
        return int(self.cfg.eval.batch_size)

    @property
    def max_samples(self) -> int | None:
        return self.cfg.eval.max_samples

    def classification_set(self):
        if "cls" not in self._cache:
            self._cache["cls"] = sets.load_classification(self.sources.classification, self.image_size,
                                                          self.cfg.eval.mode, self.max_samples)
        return self._cache["cls"]

    def retrieval_set(self):
        if "ret" not in self._cache:
            self._cache["ret"] = sets.load_retrieval(self.sources.retrieval, self.image_size,
                                                     self.cfg.eval.mode, self.max_samples)
        return self._cache["ret"]

    def mim_set(self):
        """Held-out images (the classification set's) with fixed masks, for a MIM loss."""
        if "mim" not in self._cache:
            limit = self.max_samples or MIM_EVAL_SAMPLES
            images = self.classification_set().images[:limit]
            rng = np.random.default_rng(self.cfg.train.seed + 7919)  # fixed masks, not the train RNG
            gen = mask_generator(self.cfg, self.grid)
            masks = torch.from_numpy(np.stack([gen(rng) for _ in range(len(images))]))
            self._cache["mim"] = (images, masks)
        return self._cache["mim"]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, rank: int = 0, all_ranks: bool = False) -> dict[str, float]:
        if rank != 0 and not all_ranks:
            return {}
        was_training = model.training
        model.eval()
        try:
            return self.evaluate(self, model)
        finally:
            model.train(was_training)


def mim_held_out_loss(ev: StageEvaluator, model: torch.nn.Module) -> dict[str, float]:
    """``eval/mim/loss``: the MIM loss against the teacher on held-out images with fixed masks."""
    if ev.sources.classification is None:
        return {}
    images, masks = ev.mim_set()
    total, count = 0.0, 0
    for i in range(0, len(images), ev.batch):
        x = normalize_on_device(images[i : i + ev.batch], ev.device)
        m = masks[i : i + ev.batch].to(ev.device)
        loss = mim_loss(model(x, m), teacher_targets(ev.teacher, x, ev.teacher_image_size), m)
        total += float(loss) * len(x)
        count += len(x)
    return {MIM_EVAL_METRIC: total / max(1, count)}


def zero_shot(ev: StageEvaluator, model: torch.nn.Module) -> dict[str, float]:
    """A CLIP's zero-shot classification and retrieval on the held-out sets it has."""
    out: dict[str, float] = {}
    synthetic = ev.sources.synthetic
    if ev.sources.classification:
        data = ev.classification_set()
        # a set the config names keeps its own name when the stage trains on the synthetic world
        name = set_name(ev.sources.classification, synthetic and not ev.cfg.eval.classification,
                        "classification")
        classifier = text_classifier(model, data.classnames, data.templates, ev.tokenizer, ev.device)
        batches = zip(_batches(data.images, ev.batch), _batches(data.labels, ev.batch), strict=False)
        out |= {f"eval/{name}/{k}": v for k, v in classification(model, batches, classifier,
                                                                ev.device).items()}
        out[f"eval/{name}/chance_top1"] = 1.0 / len(data.classnames)
    if ev.sources.retrieval:
        data = ev.retrieval_set()
        name = set_name(ev.sources.retrieval, synthetic and not ev.cfg.eval.retrieval, "retrieval")
        res = retrieval(model, _batches(data.images, ev.batch), data.captions, ev.tokenizer, ev.device)
        out |= {f"eval/{name}/{k}": v for k, v in res.items()}
    return out
