"""Typed schema of a stage's resolved config.

Every key a YAML file or a ``key=value`` override may set is declared here, so a typo fails at
load time (with the file that held it) instead of being silently ignored by a training job that
ran for a week. Defaults are the safe CPU ones; recipes in ``experiments/recipes`` carry the
papers' values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class StageSection:
    kind: str = "clip"  # a registered stage kind (scaling.kinds): mim | clip | ...
    rung: str = "B16"  # the rung this stage trains (student rung for mim)
    teacher_rung: Optional[str] = None  # mim: the CLIP rung whose vision tower is the teacher
    proxy: bool = True  # tiny CPU version of the rung (same architecture switches)
    name: Optional[str] = None  # e.g. "clip@18B"; filled in by the loader


@dataclass
class ModelSection:
    # Field overrides of the rung's towers, e.g. {mlp: gelu, norm: rmsnorm, pos: abs} (sweeps flip these).
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    attn: str = "sdpa"  # sdpa | flash | math
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0  # clip: fraction of patch tokens dropped (class token kept)
    drop_path: float = 0.0
    # mim: BAAI's EVA-02 init of sub-LN towers: block projections x sqrt(ln(2 depth)) after xavier
    subln_rescale: bool = False


@dataclass
class InputsSection:
    teacher: Optional[str] = None  # mim: CLIP checkpoint whose vision tower is the frozen teacher
    init_vision: Optional[str] = None  # clip: MIM (or CLIP) checkpoint initialising the vision tower
    init_text: Optional[str] = None  # clip: CLIP checkpoint initialising the text tower


@dataclass
class DataSection:
    train: Optional[str] = None  # shard pattern/url (brace expansion); None -> synthetic world
    cache_dir: str = "data/synthetic"  # where the synthetic world is generated once and reused
    synth_samples: int = 20000
    synth_seed: int = 0
    image_size: Optional[int] = None  # None -> the rung's image size
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    shuffle_buffer: int = 1000
    workers: int = 0
    resampled: bool = True


@dataclass
class EvalSection:
    classification: Optional[str] = None  # ImageFolder or clip_benchmark wds dir; None -> synthetic held-out set
    retrieval: Optional[str] = None
    every_samples: Optional[int] = None  # 0: only at the end; None: eval.points per stage
    points: int = 4  # evaluations per stage (the last at its end) when every_samples is None
    mode: str = "resize_center_crop"  # resize_center_crop | resize
    batch_size: int = 256
    max_samples: Optional[int] = None


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw | lamb
    lr: float = 1.5e-3  # vision (or only) tower peak lr
    text_lr: Optional[float] = None  # clip: text tower peak lr
    layer_decay: float = 1.0  # vision layer-wise lr decay
    text_layer_decay: float = 1.0
    weight_decay: float = 0.05
    text_weight_decay: Optional[float] = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_samples: int = 0
    min_lr: float = 0.0
    grad_clip: Optional[float] = 5.0
    # LAMB (optim.name=lamb): "deepspeed" = DeepSpeed's FusedLamb as EVA ran it (trust ratio on every
    # tensor, clamped to [lamb_min_coeff, lamb_max_coeff]); "timm" = timm's Lamb (ratio only where
    # weight decay applies, unclamped; lamb_trust_clip caps it at 1). See docs/training.md.
    lamb_rule: str = "deepspeed"
    lamb_max_coeff: float = 10.0
    lamb_min_coeff: float = 0.01
    lamb_trust_clip: bool = False


@dataclass
class TrainSection:
    samples: int = 100_000  # total samples seen by the stage
    batch_size: int = 64  # global batch
    micro_batch: Optional[int] = None  # per process; None -> batch_size / world size (no accumulation)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 0
    log_every: int = 10  # steps
    ckpt_every: int = 0  # steps; 0 -> only at the end (and on preemption)
    keep_checkpoints: int = 2
    peak_flops: Optional[float] = None  # per process, for MFU; None -> the GPU table or a CPU estimate
    compile: bool = False  # torch.compile the forward (DeepSpeed: engine.compile()); pays on GPUs


@dataclass
class LossSection:
    temperature: Optional[float] = None  # clip: fixed temperature (0.01 for 8B/18B); None -> learnable
    init_temperature: float = 0.07
    mask_ratio: float = 0.4  # mim: fraction of patches masked (block-wise)
    min_mask_patches: int = 16


@dataclass
class DistributedSection:
    deepspeed: bool = False
    zero_stage: int = 0
    backend: str = "auto"  # auto | gloo | nccl


@dataclass
class ResourcesSection:
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU processes
    tasks_per_node: int = 1  # processes per node (one per GPU on GPU nodes)
    gpu: str = "a100-40gb"  # cost table entry for planning
    mfu: float = 0.4  # assumed for GPU-hour estimates
    micro_batch: Optional[str] = None  # "auto": the planner sets train.micro_batch to the largest that fits the gpu
    cpus_per_task: int = 2
    mem_gb: int = 0  # 0: scheduler default
    timeout_min: int = 60
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    signal_delay_s: int = 120


@dataclass
class TrackingSection:
    uri: Optional[str] = None  # None -> $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working dir
    experiment: str = "scaling"
    run_id: Optional[str] = None  # set by the ladder/sweep so a requeued job continues the same run
    parent_run_id: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    system_metrics_s: float = 10.0  # MLflow system metrics every N s on each node's local rank 0; 0: off


@dataclass
class PhaseSection:
    """One phase of a stage (``phases:``, in order). Unset keys keep the stage's own value.

    A phase runs ``samples`` samples, or ``fraction`` of ``train.samples``; at most one phase may
    give neither and takes the rest. The phases' samples add up to ``train.samples``, and the
    learning-rate schedule runs over all of them.
    """

    name: Optional[str] = None  # shown in the plan and logs; default "phase<i>"
    samples: Optional[int] = None
    fraction: Optional[float] = None
    batch_size: Optional[int] = None  # global batch of this phase (train.batch_size)
    micro_batch: Optional[int] = None  # per process (train.micro_batch)
    patch_dropout: Optional[float] = None  # clip (model.patch_dropout)
    image_size: Optional[int] = None  # (data.image_size)


@dataclass
class StageConfig:
    stage: StageSection = field(default_factory=StageSection)
    model: ModelSection = field(default_factory=ModelSection)
    inputs: InputsSection = field(default_factory=InputsSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossSection = field(default_factory=LossSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    phases: list[PhaseSection] = field(default_factory=list)  # empty: one phase, the stage itself
    out_dir: str = "runs/stage"


# Allowed values; checked after every merge so the error names the file that set them.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.attn": ("sdpa", "flash", "math"),
    "eval.mode": ("resize_center_crop", "resize"),
    "optim.name": ("adamw", "lamb"),
    "optim.lamb_rule": ("deepspeed", "timm"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "distributed.zero_stage": (0, 1, 2, 3),
    "distributed.backend": ("auto", "gloo", "nccl"),
    "resources.micro_batch": (None, "auto"),
}

# (low, high, inclusive_high) ranges.
RANGES: dict[str, tuple[float, float, bool]] = {
    "model.patch_dropout": (0.0, 1.0, False),
    "model.drop_path": (0.0, 1.0, False),
    "loss.mask_ratio": (0.0, 1.0, False),
    "optim.layer_decay": (0.0, 1.0, True),
    "optim.text_layer_decay": (0.0, 1.0, True),
    "resources.mfu": (0.0, 1.0, True),
}

POSITIVE: tuple[str, ...] = ("train.samples", "train.batch_size", "optim.lr", "train.log_every",
                             "optim.lamb_max_coeff", "optim.lamb_min_coeff", "eval.batch_size",
                             "resources.timeout_min")

# Integer floors: a job needs a node, a task and a CPU; 0 GPUs means CPU processes, 0 GB the
# scheduler's default memory, 0 samples/steps "only at the end".
# Keys of MINIMUM that may also be null (unset: a default derived elsewhere).
NULLABLE = frozenset({"eval.every_samples"})
MINIMUM: dict[str, int] = {
    "resources.nodes": 1,
    "resources.tasks_per_node": 1,
    "resources.cpus_per_task": 1,
    "resources.gpus_per_node": 0,
    "resources.mem_gb": 0,
    "resources.signal_delay_s": 0,
    "train.ckpt_every": 0,
    "train.keep_checkpoints": 0,  # 0: keep every periodic checkpoint
    "eval.every_samples": 0,  # or None: see eval.points
    "eval.points": 1,
    "data.workers": 0,
    "data.synth_samples": 1,
    "optim.warmup_samples": 0,
}
