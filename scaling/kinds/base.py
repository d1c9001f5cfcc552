"""A stage kind as one object: what the planner, the costs, the sweep and the report know about a
kind of stage without building a model (torch-free), and the registry that names them.

A kind's training side (towers, the micro-step loss, evaluation) is a ``scaling.train.kinds``
module registered under the same name; ``docs/extending.md`` walks through adding one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from scaling import tower_costs
from scaling.config_dialect import ConfigError

if TYPE_CHECKING:
    from scaling.models.specs import RungSpec, TowerSpec

# (width, mlp hidden, depth, mlp kind, sub-LN, tokens per sample) of one trained tower: what the
# activation model of ``scaling.costs.memory_per_gpu`` needs
TowerRow = tuple[int, int, int, str, bool, float]


def tower_row(spec: TowerSpec, tokens: float) -> TowerRow:
    """A vision tower's row for the activation model at ``tokens`` per sample."""
    return (spec.width, spec.mlp_hidden, spec.depth, spec.mlp, spec.ln_mode == "sub", tokens)


@dataclass(frozen=True)
class MemoryShape:
    """What a stage holds per GPU besides the optimizer arithmetic ``memory_per_gpu`` does itself."""

    params: int  # trained parameters (weights, grads and optimizer states scale with them)
    block: TowerSpec  # the tower whose blocks ZeRO-3 gathers (two in flight)
    towers: list[TowerRow]  # trained towers, in forward order
    largest: int  # elements of the largest parameter gradient (allocated before it is added in)
    extra: float = 0.0  # bytes of the loss's own tensors (logits, targets)
    embeddings: int = 0  # parameters autocast does not cast (embedding tables)
    frozen: int | None = None  # parameters of a frozen model replicated in the weights' precision


class StageKind:
    """One kind of stage. Subclass it, set the attributes, override the hooks that differ from a
    single trained vision tower (the defaults), and ``register_kind`` an instance."""

    name: str = ""
    doc: str = ""
    lr_groups: tuple[str, ...] = ()  # train/lr/<group>: the optimiser's towers (train.optim.TowerGroups)
    train_metrics: tuple[str, ...] = ()  # logged beside scaling.stages.TRAIN_METRICS
    inputs: tuple[str, ...] = ()  # the inputs.* keys it reads (teacher, init_vision, init_text)
    needs_teacher: bool = False  # inputs.teacher is required (and stage.teacher_rung sizes it)
    masks: bool = False  # its train stream carries MIM masks (loss.mask_*)
    captions: bool = False  # its train stream carries tokenized captions
    patch_dropout: bool = False  # model.patch_dropout applies to it
    # its config section: defaults merged onto the schema before experiments/recipes/<name>.yaml
    config: Mapping[str, Any] = MappingProxyType({})
    result_metric: str | None = None  # what the ladder plot shows for a stage of this kind
    # what the ladder plot calls the edge from the run in its teacher_run_id tag
    teacher_label: str = "teacher"
    rung_default: bool = False  # a ladder rung trains it unless its ``stages`` says otherwise

    # -- towers ----------------------------------------------------------------------------------
    def tower(self, rung: RungSpec) -> TowerSpec:
        """The vision tower the stage trains (its image size is the stage's)."""
        return rung.vision

    def towers(self, rung: RungSpec) -> dict[str, Any]:
        """The towers it builds from the rung, by config key (``model.<key>``): vision first."""
        return {"vision": self.tower(rung)}

    def check_rung(self, rung: RungSpec) -> None:
        """Raise ``ValueError`` when ``rung`` cannot train this kind."""

    # -- metrics ---------------------------------------------------------------------------------
    def eval_metrics(self, classification: str | None, retrieval: str | None) -> tuple[str, ...]:
        """The metrics its evaluation logs given the eval sets' metric names (None: no such set)."""
        return ()

    # -- costs (scaling.costs adds them up) -------------------------------------------------------
    def params(self, rung: RungSpec, teacher: RungSpec | TowerSpec | None = None) -> int:
        """Trained parameters, as built."""
        return tower_costs.params(self.tower(rung))

    def law_params(self, rung: RungSpec) -> int:
        """The model size a sweep's ``cost/params`` and the report's law use."""
        return tower_costs.params(self.tower(rung))

    def flops_per_sample(self, rung: RungSpec, patch_dropout: float = 0.0, mask_ratio: float = 0.4,
                         teacher: RungSpec | TowerSpec | None = None) -> float:
        """Training FLOPs of one sample (3 x forward for what is trained, 1 x for what is frozen)."""
        return 3.0 * tower_costs.forward_flops(self.tower(rung))

    def memory_shape(self, rung: RungSpec, micro_batch: int, gpus: int, patch_dropout: float = 0.0,
                     teacher: RungSpec | None = None) -> MemoryShape:
        vision = self.tower(rung)
        return MemoryShape(self.params(rung, teacher), vision, [tower_row(vision, vision.num_tokens)],
                           max(vision.width * vision.mlp_hidden, vision.width * (vision.embed_dim or 0)))

    # -- wiring ----------------------------------------------------------------------------------
    def sweep_inputs(self, previous: str | None, teacher: str | None) -> dict[str, str]:
        """A sweep pipeline's ``inputs.*`` for this stage: ``previous`` is the pipeline's stage
        before it (its out_dir), ``teacher`` the sweep's CLIP (``base.teacher``)."""
        return {"init_vision": previous} if previous and "init_vision" in self.inputs else {}


_KINDS: dict[str, StageKind] = {}


def register_kind(kind: StageKind) -> StageKind:
    """Make ``kind`` known to the loaders, planners, costs and report under ``kind.name``."""
    if not kind.name or "@" in kind.name or "." in kind.name:
        raise ValueError(f"a stage kind needs a name without '@' or '.'; got {kind.name!r}")
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"stage kind '{kind.name}' is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Forget a kind (a test's own kind, after the test)."""
    _KINDS.pop(name, None)


def kind_names() -> tuple[str, ...]:
    """The registered kinds, in registration order (mim, clip, then any added)."""
    return tuple(_KINDS)


def default_kinds() -> tuple[str, ...]:
    """What a ladder rung trains when its ``stages`` is not given (mim, clip)."""
    return tuple(name for name, kind in _KINDS.items() if kind.rung_default)


def stage_kind(name: str) -> StageKind:
    """The registered kind ``name``; ``ConfigError`` (a ``ValueError``) naming the known ones otherwise."""
    try:
        return _KINDS[str(name)]
    except KeyError:
        raise ConfigError(f"unknown stage kind '{name}': use one of {', '.join(_KINDS)}") from None
