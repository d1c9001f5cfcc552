"""``mim``: masked image modelling of a vision tower (EVA-02): the student regresses a frozen CLIP
teacher's patch features at the masked positions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scaling import tower_costs
from scaling.kinds.base import MemoryShape, StageKind, tower_row
from scaling.stages import MIM_EVAL_METRIC

if TYPE_CHECKING:
    from scaling.models.specs import RungSpec, TowerSpec


class MimKind(StageKind):
    name = "mim"
    doc = "MIM pre-training of a vision tower against a frozen CLIP teacher"
    lr_groups = ("vision", "head")
    inputs = ("teacher",)
    needs_teacher = True
    masks = True
    result_metric = MIM_EVAL_METRIC
    rung_default = True

    def tower(self, rung: RungSpec) -> TowerSpec:
        return rung.mim

    def eval_metrics(self, classification: str | None, retrieval: str | None) -> tuple[str, ...]:
        # the held-out MIM loss runs on the classification set's images
        return (MIM_EVAL_METRIC,) if classification else ()

    def params(self, rung: RungSpec, teacher: RungSpec | TowerSpec | None = None) -> int:
        target_dim = tower_costs.mim_target_dim(teacher, rung.mim)
        return tower_costs.params(rung.mim) + tower_costs.mim_head_params(rung.mim, target_dim)

    def flops_per_sample(self, rung: RungSpec, patch_dropout: float = 0.0, mask_ratio: float = 0.4,
                         teacher: RungSpec | TowerSpec | None = None) -> float:
        """The student tower on every token, its head (to the teacher's embedding dim) on the masked
        ones, plus the frozen ``teacher``'s vision tower forward with its CLIP head on every patch
        (not counted when ``teacher`` is None, e.g. with cached targets)."""
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1]; got {mask_ratio}")
        student = rung.mim
        target_dim = tower_costs.mim_target_dim(teacher, student)
        per_sample = tower_costs.forward_flops(student)
        per_sample += 2.0 * mask_ratio * student.num_patches * student.width * target_dim
        total = 3.0 * per_sample
        if teacher is not None:
            total += tower_costs.teacher_forward_flops(teacher)
        return total

    def memory_shape(self, rung: RungSpec, micro_batch: int, gpus: int, patch_dropout: float = 0.0,
                     teacher: RungSpec | None = None) -> MemoryShape:
        vision = rung.mim
        target_dim = tower_costs.mim_target_dim(teacher, vision)
        largest = max(vision.width * vision.mlp_hidden, vision.width * (vision.embed_dim or 0),
                      vision.width * target_dim)
        # teacher targets and student predictions, fp32
        extra = 4.0 * micro_batch * vision.num_patches * target_dim * 2
        frozen = tower_costs.params(teacher.vision) if teacher is not None else None
        return MemoryShape(self.params(rung, teacher), vision, [tower_row(vision, vision.num_tokens)], largest,
                           extra, frozen=frozen)

    def sweep_inputs(self, previous: str | None, teacher: str | None) -> dict[str, str]:
        return {"teacher": teacher} if teacher else {}
