"""Training a ``mim`` stage: a student vision tower with a prediction head regresses the frozen
CLIP teacher's features at the masked patches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scaling.eval.runner import mim_held_out_loss
from scaling.models.build import build_mim, vision_layer_id
from scaling.models.losses import mim_loss, teacher_targets
from scaling.tower_costs import mim_target_dim
from scaling.train.kinds.base import KindTraining
from scaling.train.optim import TowerGroups
from scaling.train.stage_models import build_teacher, model_options, stage_rung

if TYPE_CHECKING:
    from scaling.eval.runner import StageEvaluator
    from scaling.train.loop import TrainingLoop


class MimTraining(KindTraining):
    def build(self, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
        rung = stage_rung(self.cfg)
        teacher, teacher_image = build_teacher(self.cfg, rung.mim, device)
        model = build_mim(rung, mim_target_dim(teacher.spec, rung.mim), **model_options(self.cfg, device))
        return model, teacher, {"rung": rung, "teacher_image_size": teacher_image, "teacher_spec": teacher.spec}

    def trained_tower(self, module: nn.Module) -> nn.Module:
        return module.encoder

    def towers(self, module: nn.Module) -> tuple[list[TowerGroups], dict[str, nn.Parameter] | None]:
        o = self.cfg.optim
        return [TowerGroups("vision", module.encoder, o.lr, o.weight_decay, o.layer_decay, vision_layer_id),
                TowerGroups("head", module, o.lr, o.weight_decay, 1.0)], None

    def loss(self, loop: TrainingLoop, model: nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor:
        mask = batch["mask"].to(loop.device).bool()
        targets = teacher_targets(loop.teacher, images, loop.teacher_image_size)
        return mim_loss(model(images, mask), targets, mask)

    def evaluate(self, evaluator: StageEvaluator, model: nn.Module) -> dict[str, float]:
        return mim_held_out_loss(evaluator, model)
