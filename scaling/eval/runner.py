"""Evaluation inside a stage: zero-shot classification/retrieval for CLIPs, held-out loss for MIM."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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


class StageEvaluator:
    """Loads the held-out sets once; ``__call__(model, rank, all_ranks)`` returns ``eval/...`` metrics
    on rank 0. With ``all_ranks`` (ZeRO-3: parameters are gathered collectively) every rank runs."""

    def __init__(self, cfg: DictConfig, sources, image_size: int, grid: int, tokenizer, device: torch.device,
                 teacher=None, teacher_image_size: int | None = None) -> None:
        self.cfg = cfg
        self.kind = cfg.stage.kind
        self.sources = sources
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.device = device
        self.teacher = teacher
        self.teacher_image_size = teacher_image_size
        self.batch = cfg.eval.batch_size
        self.max_samples = cfg.eval.max_samples
        self._cache: dict = {}
        self.grid = grid

    def _classification_set(self):
        if "cls" not in self._cache:
            self._cache["cls"] = sets.load_classification(self.sources.classification, self.image_size,
                                                          self.cfg.eval.mode, self.max_samples)
        return self._cache["cls"]

    def _retrieval_set(self):
        if "ret" not in self._cache:
            self._cache["ret"] = sets.load_retrieval(self.sources.retrieval, self.image_size,
                                                     self.cfg.eval.mode, self.max_samples)
        return self._cache["ret"]

    def _mim_set(self):
        if "mim" not in self._cache:
            limit = self.max_samples or MIM_EVAL_SAMPLES
            images = self._classification_set().images[:limit]
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
            return self._run(model)
        finally:
            model.train(was_training)

    def _run(self, model) -> dict[str, float]:
        out: dict[str, float] = {}
        synthetic = self.sources.synthetic
        if self.kind == "mim":
            if self.sources.classification is None:
                return out
            images, masks = self._mim_set()
            total, count = 0.0, 0
            for i in range(0, len(images), self.batch):
                x = normalize_on_device(images[i : i + self.batch], self.device)
                m = masks[i : i + self.batch].to(self.device)
                loss = mim_loss(model(x, m), teacher_targets(self.teacher, x, self.teacher_image_size), m)
                total += float(loss) * len(x)
                count += len(x)
            return {MIM_EVAL_METRIC: total / max(1, count)}
        if self.sources.classification:
            data = self._classification_set()
            # a set the config names keeps its own name when the stage trains on the synthetic world
            name = set_name(self.sources.classification, synthetic and not self.cfg.eval.classification,
                            "classification")
            classifier = text_classifier(model, data.classnames, data.templates, self.tokenizer, self.device)
            batches = zip(_batches(data.images, self.batch), _batches(data.labels, self.batch), strict=False)
            out |= {f"eval/{name}/{k}": v for k, v in classification(model, batches, classifier,
                                                                    self.device).items()}
            out[f"eval/{name}/chance_top1"] = 1.0 / len(data.classnames)
        if self.sources.retrieval:
            data = self._retrieval_set()
            name = set_name(self.sources.retrieval, synthetic and not self.cfg.eval.retrieval, "retrieval")
            res = retrieval(model, _batches(data.images, self.batch), data.captions, self.tokenizer, self.device)
            out |= {f"eval/{name}/{k}": v for k, v in res.items()}
        return out
