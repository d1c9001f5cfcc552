"""Training a ``clip`` stage: a vision and a text tower (either may start from a checkpoint) and a
learned temperature under the contrastive loss over the global batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

from scaling.eval.runner import zero_shot
from scaling.models.build import build_clip, text_layer_id, vision_layer_id
from scaling.models.losses import ContrastiveLoss
from scaling.train.errors import StageInputError
from scaling.train.kinds.base import KindTraining
from scaling.train.optim import TowerGroups
from scaling.train.stage_models import init_text, init_vision, model_options, stage_rung

if TYPE_CHECKING:
    from scaling.eval.runner import StageEvaluator
    from scaling.train.loop import TrainingLoop


class ClipTraining(KindTraining):
    def __init__(self, cfg: DictConfig, rank: int = 0, world: int = 1) -> None:
        super().__init__(cfg, rank, world)
        self.loss_fn = ContrastiveLoss(rank, world)

    def build(self, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
        cfg = self.cfg
        rung = stage_rung(cfg)
        if rung.text is None:
            raise StageInputError(f"rung {rung.name} has no text tower: a clip stage needs a CLIP rung")
        model = build_clip(rung, patch_dropout=cfg.model.patch_dropout, **model_options(cfg, device))
        if cfg.inputs.init_vision:
            init_vision(model.visual, cfg.inputs.init_vision)
        if cfg.inputs.init_text:
            init_text(model.text, cfg.inputs.init_text)
        # a fixed temperature is not trained; else it starts at loss.init_temperature
        temperature = cfg.loss.temperature if cfg.loss.temperature is not None else cfg.loss.init_temperature
        with torch.no_grad():
            model.logit_scale.fill_(float(torch.log(torch.tensor(1.0 / temperature))))
        if cfg.loss.temperature is not None:
            model.logit_scale.requires_grad_(False)
        return model, None, {"rung": rung}

    def trained_tower(self, module: nn.Module) -> nn.Module:
        return module.visual

    def towers(self, module: nn.Module) -> tuple[list[TowerGroups], dict[str, nn.Parameter] | None]:
        o = self.cfg.optim
        text_lr = o.text_lr if o.text_lr is not None else o.lr
        text_wd = o.text_weight_decay if o.text_weight_decay is not None else o.weight_decay
        return [TowerGroups("vision", module.visual, o.lr, o.weight_decay, o.layer_decay, vision_layer_id),
                TowerGroups("text", module.text, text_lr, text_wd, o.text_layer_decay, text_layer_id)], \
            {"logit_scale": module.logit_scale}

    def loss(self, loop: TrainingLoop, model: nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor:
        tokens = batch["text"].to(loop.device, non_blocking=True)
        image_features, text_features, scale = model(images, tokens)
        return self.loss_fn(image_features, text_features, scale)

    def train_metrics(self, module: nn.Module) -> dict[str, float]:
        return {"train/temperature": float(1.0 / module.logit_scale.detach().float().exp())}

    def evaluate(self, evaluator: StageEvaluator, model: nn.Module) -> dict[str, float]:
        return zero_shot(evaluator, model)
