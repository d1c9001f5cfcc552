"""``clip``: contrastive image-text training of a vision and a text tower (EVA-CLIP), the vision
tower usually initialised from the rung's MIM stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scaling import tower_costs
from scaling.kinds.base import MemoryShape, StageKind, tower_row
from scaling.stages import CLASSIFICATION_METRICS, eval_metric, retrieval_metrics

if TYPE_CHECKING:
    from scaling.models.specs import RungSpec, TowerSpec


class ClipKind(StageKind):
    name = "clip"
    doc = "contrastive CLIP training of a vision and a text tower"
    lr_groups = ("vision", "text", "logit_scale")
    train_metrics = ("train/temperature",)
    inputs = ("init_vision", "init_text")
    captions = True
    patch_dropout = True
    result_metric = "eval/synth_cls/top1"
    rung_default = True
    teacher_label = "text init"  # a CLIP stage's teacher_run_id is where its text tower comes from

    def towers(self, rung: RungSpec) -> dict[str, Any]:
        return {"vision": rung.vision, **({"text": rung.text} if rung.text is not None else {})}

    def check_rung(self, rung: RungSpec) -> None:
        if rung.text is None:
            raise ValueError(f"{rung.name} has no text tower; a clip stage needs a CLIP rung")

    def eval_metrics(self, classification: str | None, retrieval: str | None) -> tuple[str, ...]:
        out = [eval_metric(classification, m) for m in CLASSIFICATION_METRICS] if classification else []
        out += [eval_metric(retrieval, m) for m in retrieval_metrics()] if retrieval else []
        return tuple(out)

    def params(self, rung: RungSpec, teacher: RungSpec | TowerSpec | None = None) -> int:
        return tower_costs.clip_params(rung)

    def law_params(self, rung: RungSpec) -> int:
        return tower_costs.clip_params(rung)

    def flops_per_sample(self, rung: RungSpec, patch_dropout: float = 0.0, mask_ratio: float = 0.4,
                         teacher: RungSpec | TowerSpec | None = None) -> float:
        """The vision tower (with patch dropout) and the text tower."""
        self.check_rung(rung)
        per_sample = tower_costs.forward_flops(rung.vision, tokens=tower_costs.kept_tokens(rung.vision, patch_dropout))
        per_sample += tower_costs.forward_flops(rung.text)
        return 3.0 * per_sample

    def memory_shape(self, rung: RungSpec, micro_batch: int, gpus: int, patch_dropout: float = 0.0,
                     teacher: RungSpec | None = None) -> MemoryShape:
        self.check_rung(rung)
        vision, t = rung.vision, rung.text
        towers = [tower_row(vision, tower_costs.kept_tokens(vision, patch_dropout)),
                  (t.width, t.mlp_hidden, t.depth, "gelu", False, t.context_length)]
        largest = max(vision.width * vision.mlp_hidden, vision.width * (vision.embed_dim or 0),
                      t.vocab_size * t.width, t.width * t.mlp_hidden)
        # fp32 logits against the global batch, and their gradient
        extra = 2 * 4.0 * micro_batch * micro_batch * gpus
        return MemoryShape(tower_costs.clip_params(rung), vision, towers, largest, extra,
                           embeddings=t.vocab_size * t.width)

    def sweep_inputs(self, previous: str | None, teacher: str | None) -> dict[str, str]:
        # after a MIM stage: its tower, and the sweep's CLIP's text tower
        if not previous:
            return {}
        return {"init_vision": previous, **({"init_text": teacher} if teacher else {})}
