"""What a rung costs before it runs: parameters, FLOPs, memory per GPU, GPU-hours (no torch).

Conventions
-----------
* ``params`` counts exactly what ``scaling.models.build`` builds (tests check every rung).
* FLOPs are **2 x multiply-adds of the matmuls** (linear layers, attention scores ``QK^T`` and
  ``AV``, the patch embedding). Norms, activations, softmax, RoPE and the loss are left out
  (< 1 % at these sizes). Attention is counted dense over all ``T`` tokens.
* ``eva02_gflops`` is the EVA-02 paper's "GFLOPs": multiply-adds (not x2), in billions, at 196
  patch tokens plus the class token, whatever the tower's own resolution.
* Training = 3 x forward (forward + backward ~ 2 x forward) for trained parts; a frozen MIM
  teacher runs forward only. Patch dropout shortens the vision sequence (patch embedding still
  sees every patch); MIM masking does not shorten the student's sequence (masked patches are
  replaced by the [MASK] token), it only limits the prediction head to masked tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scaling.kinds import kind_names, stage_kind

# The per-tower parts, re-exported: what callers have always read here.
from scaling.tower_costs import (  # noqa: F401
    clip_params,
    eva02_gflops,
    forward_flops,
    forward_macs,
    mim_head_params,
    mim_target_dim,
    params,
    teacher_forward_flops,
    text_block_params,
    vision_block_params,
)

if TYPE_CHECKING:
    from scaling.models.specs import RungSpec, TowerSpec

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s: NVIDIA A100 and H100 SXM datasheets.
GPU_PEAK_FLOPS: dict[str, float] = {
    "a100-40gb": 312e12,
    "a100-80gb": 312e12,
    "h100-80gb": 989e12,
}
# Of a GPU's memory, the share the tensors may use (the rest: CUDA context, fragmentation).
HEADROOM = 0.9
GPU_MEMORY_BYTES: dict[str, float] = {
    "a100-40gb": 40 * 2**30,
    "a100-80gb": 80 * 2**30,
    "h100-80gb": 80 * 2**30,
}
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZER_STATES = {"lamb": 2, "adamw": 2, "adam": 2, "sgd": 1}  # fp32 tensors per parameter


def train_flops(
    rung: RungSpec,
    kind: str,
    samples: float,
    patch_dropout: float = 0.0,
    mask_ratio: float = 0.4,
    teacher: RungSpec | TowerSpec | None = None,
) -> float:
    """Training FLOPs for ``samples`` samples seen: the stage kind's FLOPs per sample
    (``scaling.kinds.StageKind.flops_per_sample``: 3 x forward for trained towers, 1 x for a
    frozen ``teacher``) times ``samples``."""
    if kind not in kind_names():
        raise ValueError(f"kind must be one of {', '.join(kind_names())}; got {kind!r}")
    if samples < 0:
        raise ValueError(f"samples must be >= 0; got {samples}")
    return stage_kind(kind).flops_per_sample(rung, patch_dropout, mask_ratio, teacher) * samples


# Bytes per saved activation element and per residual-stream element, by how a step runs.
# Measured on real-size B16 CLIP / L14 MIM steps (benchmarks/bench_memory.py): torch autocast
# keeps the residual stream, norms and softmax in fp32 and the matmul inputs in bf16, which
# averages 2.5 bytes per saved element; DeepSpeed's bf16 runs the whole module in bf16.
_ACT_BYTES = {"fp32": (4.0, 4.0), "autocast": (2.5, 4.0), "half": (2.0, 2.0)}


def _block_elements(width: int, hidden: int, mlp: str, sub: bool) -> int:
    """Saved activation elements per token of one block (fused attention: no T x T matrix).

    Attention: norm input and output, q/k/v, RoPE'd q/k, the attention output, the residual;
    SwiGLU: both projections, the gated product and its SiLU; sub-LN: the norm in front of the
    attention projection and of the MLP output projection.
    """
    if mlp == "swiglu":
        per = 9 * width + 4 * hidden
    else:  # fc1 output and its GELU
        per = 8 * width + 2 * hidden
    if sub:
        per += 2 * width + hidden
    return per


def _activation_bytes(
    towers: list[tuple[int, int, int, str, bool, float]],
    micro_batch: int,
    ckpt: bool,
    mode: str,
    weight_cache: float,
    grad_temp: float,
) -> float:
    """Peak activation bytes of one forward + backward over ``towers``
    (width, hidden, depth, mlp, sub-LN, tokens per sample).

    Without checkpointing every block's activations are saved. With it, the block inputs are
    kept and one block is recomputed at a time during the backward. ``weight_cache``: autocast's
    bf16 copies of the weights, alive to the end of the forward (and saved for the backward
    without checkpointing). ``grad_temp``: the largest parameter gradient, allocated before it is
    added into the one in place (the text token embedding for a CLIP), at the end of the last
    tower's backward, while the towers before it (the vision tower) still hold theirs.
    """
    act, resid = _ACT_BYTES[mode]
    saved = [t * d * _block_elements(w, h, m, sub) * act for w, h, d, m, sub, t in towers]
    if not ckpt:
        # the last tower's backward ends in its largest gradient while the towers before it
        # still hold their activations
        return weight_cache + max(micro_batch * sum(saved), grad_temp + micro_batch * sum(saved[:-1]))
    inputs = [t * d * w * resid for w, _, d, _, _, t in towers]
    block = max(t * _block_elements(w, h, m, sub) for w, h, _, m, sub, t in towers) * act
    return max(weight_cache + micro_batch * sum(inputs), micro_batch * (sum(inputs) + block),
               grad_temp + micro_batch * sum(inputs[:-1]))


def memory_per_gpu(
    rung: RungSpec,
    kind: str,
    gpus: int,
    micro_batch: int,
    zero_stage: int,
    precision: str = "bf16",
    grad_checkpointing: bool = True,
    optimizer: str = "lamb",
    *,
    patch_dropout: float = 0.0,
    teacher: RungSpec | None = None,
    deepspeed: bool = True,
) -> dict[str, float]:
    """Bytes per GPU: ``weights``, ``grads``, ``optimizer``, ``activations``, ``total``.

    Mixed precision keeps bf16/fp16 weights and grads plus fp32 master weights and optimizer
    moments (the ZeRO paper's 2 + 2 + 12 bytes per parameter for Adam/LAMB); ZeRO-1 shards the
    optimizer, ZeRO-2 also the grads, ZeRO-3 also the weights (plus two gathered blocks in
    flight). ``deepspeed=False`` is the plain torch engine: fp32 weights and grads, bf16 by
    autocast. A MIM teacher is frozen and replicated in the weights' precision. Activations
    (``_activation_bytes``) assume a fused attention kernel and gradient checkpointing per block
    when asked; the model is checked against measured steps by ``benchmarks/bench_memory.py``.
    """
    if kind not in kind_names():
        raise ValueError(f"kind must be one of {', '.join(kind_names())}; got {kind!r}")
    if precision not in PRECISION_BYTES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_BYTES)}; got {precision!r}"
        )
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(
            f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {optimizer!r}"
        )
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3; got {zero_stage}")
    if gpus < 1 or micro_batch < 1:
        raise ValueError(f"gpus and micro_batch must be >= 1; got {gpus}, {micro_batch}")
    if zero_stage > 0 and not deepspeed:
        raise ValueError(f"zero_stage {zero_stage} needs deepspeed (ZeRO is DeepSpeed's)")
    act_bytes = PRECISION_BYTES[precision]
    mixed = precision != "fp32"
    # DeepSpeed's bf16/fp16 keeps half-precision weights and grads and an fp32 master copy in
    # the optimizer; the plain engine's autocast keeps fp32 weights and grads (no master copy).
    param_bytes = act_bytes if deepspeed else 4
    shape = stage_kind(kind).memory_shape(rung, micro_batch, gpus, patch_dropout, teacher)
    n_params, vision = shape.params, shape.block
    weight_bytes = n_params * param_bytes
    grad_bytes = n_params * param_bytes
    optim_bytes = n_params * (OPTIMIZER_STATES[optimizer] * 4 + (4 if mixed and deepspeed else 0))
    if zero_stage >= 1:
        optim_bytes /= gpus
    if zero_stage >= 2:
        grad_bytes /= gpus
    if zero_stage >= 3:
        # the gathered current block and the prefetched next one
        in_flight = 2 * vision_block_params(vision) * act_bytes
        weight_bytes = weight_bytes / gpus + in_flight
    mode = "fp32" if not mixed else ("half" if deepspeed else "autocast")
    # autocast casts the matmul weights, not the embedding tables
    weight_cache = 2.0 * (n_params - shape.embeddings) if mode == "autocast" else 0.0
    activation_bytes = _activation_bytes(
        shape.towers, micro_batch, grad_checkpointing, mode, weight_cache, shape.largest * param_bytes
    ) + shape.extra
    out = {
        "weights": float(weight_bytes),
        "grads": float(grad_bytes),
        "optimizer": float(optim_bytes),
        "activations": float(activation_bytes),
    }
    if shape.frozen is not None:
        out["teacher"] = float(shape.frozen * param_bytes)
    out["total"] = float(sum(out.values()))
    return out


def config_memory(cfg, rung: RungSpec, teacher: RungSpec | None, gpus: int, micro_batch: int) -> dict[str, float]:
    """``memory_per_gpu`` with the precision, checkpointing, ZeRO stage, optimizer, engine and
    patch dropout a resolved stage config (``scaling.config``) sets: the one place where the
    ladder's plan and ``python -m scaling.rungs`` read those defaults."""
    kind = stage_kind(cfg.stage.kind)
    deepspeed = bool(cfg.distributed.deepspeed)
    return memory_per_gpu(
        rung, kind.name, gpus, micro_batch, int(cfg.distributed.zero_stage) if deepspeed else 0,
        precision=str(cfg.train.precision), grad_checkpointing=bool(cfg.model.grad_checkpointing),
        optimizer=str(cfg.optim.name), patch_dropout=float(cfg.model.patch_dropout) if kind.patch_dropout else 0.0,
        teacher=teacher if kind.needs_teacher else None, deepspeed=deepspeed,
    )


def fits(memory: dict[str, float], gpu: str, headroom: float = HEADROOM) -> bool:
    """Whether ``memory['total']`` fits ``headroom`` of the GPU (the rest: CUDA context, fragmentation)."""
    return memory["total"] <= headroom * _lookup(GPU_MEMORY_BYTES, gpu)


def _lookup(table: dict[str, float], gpu: str) -> float:
    if gpu not in table:
        raise ValueError(f"unknown gpu '{gpu}'; known: {', '.join(table)}")
    return table[gpu]


def gpu_hours(train_flops: float, gpu: str = "a100-40gb", mfu: float = 0.4) -> float:
    """GPU-hours for ``train_flops`` at model-FLOPs utilisation ``mfu`` of the GPU's bf16 peak."""
    if not 0.0 < mfu <= 1.0:
        raise ValueError(f"mfu must be in (0, 1]; got {mfu}")
    return train_flops / (_lookup(GPU_PEAK_FLOPS, gpu) * mfu) / 3600.0


def implied_mfu(train_flops: float, gpus: int, wall_hours: float, gpu: str = "a100-40gb") -> float:
    """The MFU a run of ``train_flops`` must have reached to finish in ``wall_hours`` on ``gpus``."""
    if gpus < 1 or wall_hours <= 0 or math.isnan(wall_hours):
        raise ValueError(f"gpus must be >= 1 and wall_hours > 0; got {gpus}, {wall_hours}")
    return train_flops / (gpus * wall_hours * 3600.0 * _lookup(GPU_PEAK_FLOPS, gpu))
