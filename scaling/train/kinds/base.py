"""The training side of a stage kind: the model it builds, how its towers are optimised, the loss
of one micro-batch and its evaluation. ``TrainingLoop`` (``train/loop.py``) asks these hooks; the
torch-free side of the kind (metrics, inputs, costs) is ``scaling.kinds``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

from scaling.train.optim import TowerGroups

if TYPE_CHECKING:
    from scaling.eval.runner import StageEvaluator
    from scaling.train.loop import TrainingLoop


class KindTraining:
    """Subclass it per stage kind and ``register_training`` the class under the kind's name; one
    instance trains one stage (``cfg``) on rank ``rank`` of ``world`` processes."""

    def __init__(self, cfg: DictConfig, rank: int = 0, world: int = 1) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world

    def build(self, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
        """(trained model, frozen teacher or None, info): ``info['rung']`` is the rung spec it was
        built from; a teacher also gives ``teacher_image_size`` and ``teacher_spec``."""
        raise NotImplementedError

    def trained_tower(self, module: nn.Module) -> nn.Module:
        """The vision tower a phase at another image size resizes."""
        raise NotImplementedError

    def towers(self, module: nn.Module) -> tuple[list[TowerGroups], dict[str, nn.Parameter] | None]:
        """The optimiser's towers (their names are the kind's ``lr_groups``) and stray parameters."""
        raise NotImplementedError

    def loss(self, loop: TrainingLoop, model: nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor:
        """The loss of one micro-batch; ``images`` normalised on the device, ``model`` the engine's."""
        raise NotImplementedError

    def train_metrics(self, module: nn.Module) -> dict[str, float]:
        """The kind's own ``train_metrics``, logged with the loss."""
        return {}

    def evaluate(self, evaluator: StageEvaluator, model: nn.Module) -> dict[str, float]:
        """The kind's ``eval_metrics`` on the held-out sets ``evaluator`` loads."""
        return {}
