"""A third stage kind, defined outside the package: ``probe``, a supervised linear probe on a
frozen vision tower (the evaluation EVA-CLIP-18B reports in Table 7, linear probing on
ImageNet-1K), here on the synthetic world: the colour of the first object a caption names.

Its two halves are what ``docs/extending.md`` asks of a new kind: the torch-free ``StageKind``
(inputs, metrics, costs) and its ``KindTraining`` (model, towers, loss, evaluation), each
registered under the name; no line of the loop, the planner or the report names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from scaling import tower_costs
from scaling.data.transforms import normalize_on_device
from scaling.data.world import COLOUR_NAMES
from scaling.kinds import StageKind, register_kind, unregister_kind
from scaling.models.build import build_vision
from scaling.stages import eval_set_name
from scaling.train.kinds import KindTraining, register_training, unregister_training
from scaling.train.optim import TowerGroups
from scaling.train.stage_models import init_vision, model_options, stage_rung

if TYPE_CHECKING:
    from scaling.eval.runner import StageEvaluator
    from scaling.models.specs import RungSpec, TowerSpec
    from scaling.train.loop import TrainingLoop

NAME = "probe"
CLASSES = len(COLOUR_NAMES)  # chance: 1 / 8


def colour_label(text: str) -> int:
    """The colour of the first object ``text`` names (the synthetic world's captions and class
    names both put the colour before the shape)."""
    words = text.replace(".", " ").replace(",", " ").split()
    return next(COLOUR_NAMES.index(w) for w in words if w in COLOUR_NAMES)


class ProbeKind(StageKind):
    name = NAME
    doc = "a linear probe (colour of the first object) on a frozen vision tower"
    lr_groups = ("head",)
    inputs = ("init_vision",)
    config = {"optim": {"lr": 0.01, "weight_decay": 0.0}}  # a probe's head learns fast; nothing to regularise

    def eval_metrics(self, classification: str | None, retrieval: str | None) -> tuple[str, ...]:
        return (f"eval/{classification}/probe_top1",) if classification else ()

    def params(self, rung: RungSpec, teacher: RungSpec | TowerSpec | None = None) -> int:
        return self.tower(rung).embed_dim * CLASSES + CLASSES  # only the head trains

    def flops_per_sample(self, rung: RungSpec, patch_dropout: float = 0.0, mask_ratio: float = 0.4,
                         teacher: RungSpec | TowerSpec | None = None) -> float:
        # the frozen tower forward once; the head forward and backward
        return tower_costs.forward_flops(self.tower(rung)) + 3.0 * 2.0 * self.params(rung)


class Probe(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual.requires_grad_(False)
        # features standardised by a BatchNorm without affine parameters (MAE's linear probe, He et
        # al. 2022): the frozen tower's feature scale does not set the head's lr
        self.head = nn.Sequential(nn.BatchNorm1d(visual.spec.embed_dim, affine=False),
                                  nn.Linear(visual.spec.embed_dim, CLASSES))

    def train(self, mode: bool = True) -> Probe:
        super().train(mode)
        self.visual.eval()  # frozen: no drop path, the features a probe reads are the tower's
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.visual(images)
        return self.head(features.float())


class ProbeTraining(KindTraining):
    def build(self, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
        rung = stage_rung(self.cfg)
        visual = build_vision(rung.vision, **model_options(self.cfg, device))
        init_vision(visual, self.cfg.inputs.init_vision)
        return Probe(visual), None, {"rung": rung}

    def trained_tower(self, module: nn.Module) -> nn.Module:
        return module.visual

    def towers(self, module: nn.Module) -> tuple[list[TowerGroups], dict[str, nn.Parameter] | None]:
        o = self.cfg.optim
        return [TowerGroups("head", module.head, o.lr, o.weight_decay)], None

    def loss(self, loop: TrainingLoop, model: nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = torch.tensor([colour_label(c) for c in batch["caption"]], device=loop.device)
        return F.cross_entropy(model(images), labels)

    def evaluate(self, evaluator: StageEvaluator, model: nn.Module) -> dict[str, float]:
        """Top-1 colour of the held-out classification set's single objects."""
        if not evaluator.sources.classification:
            return {}
        data = evaluator.classification_set()
        colour = torch.tensor([colour_label(name) for name in data.classnames])
        hits = 0
        for i in range(0, len(data.images), evaluator.batch):
            logits = model(normalize_on_device(data.images[i: i + evaluator.batch], evaluator.device))
            hits += int((logits.argmax(-1).cpu() == colour[data.labels[i: i + evaluator.batch]]).sum())
        # named as the stage's other metrics of that set (scaling.kinds.logged_metrics)
        synthetic = evaluator.sources.synthetic and not self.cfg.eval.classification
        name = eval_set_name(evaluator.sources.classification, synthetic, "classification")
        return {f"eval/{name}/probe_top1": hits / len(data.images)}


@contextmanager
def probe_registered() -> Iterator[ProbeKind]:
    """The ``probe`` kind known to the loaders, planners and loop for the ``with`` block."""
    kind = register_kind(ProbeKind())
    register_training(NAME, ProbeTraining)
    try:
        yield kind
    finally:
        unregister_training(NAME)
        unregister_kind(NAME)
