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
from typing import TYPE_CHECKING, Union

from scaling import stages

if TYPE_CHECKING:
    from scaling.models.specs import RungSpec, TextSpec, TowerSpec

    AnySpec = Union[TowerSpec, TextSpec]

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
KINDS = stages.KINDS  # re-exported: ``python -m scaling.rungs --kind`` reads it here


def _is_text(spec: AnySpec) -> bool:
    return hasattr(spec, "vocab_size")


def _norm_params(spec: TowerSpec, dim: int) -> int:
    # RMSNorm has a scale only; LayerNorm a scale and a bias
    return dim if spec.norm == "rmsnorm" else 2 * dim


def vision_block_params(spec: TowerSpec) -> int:
    """Parameters of one EVA block."""
    w, h = spec.width, spec.mlp_hidden
    attn = 4 * w * w + w  # q, k, v, proj weights + proj bias
    if spec.qkv_bias:
        attn += 2 * w  # q and v biases (EVA has no k bias)
    sub = spec.ln_mode == "sub"
    if sub and spec.sub_ln_attn:
        attn += _norm_params(spec, w)
    n_in = 2 if spec.mlp == "swiglu" else 1  # SwiGLU: gate and value projections
    mlp = n_in * (w * h + h) + h * w + w
    if sub:
        mlp += _norm_params(spec, h)
    return attn + mlp + 2 * _norm_params(spec, w)


def text_block_params(spec: TextSpec) -> int:
    w, h = spec.width, spec.mlp_hidden
    return (3 * w * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w) + 2 * 2 * w


def params(spec: AnySpec) -> int:
    """Exact parameter count of a tower as built (vision incl. its CLIP projection, if any)."""
    if _is_text(spec):
        w = spec.width
        embed = spec.vocab_size * w + spec.context_length * w
        proj = w * spec.embed_dim if spec.embed_dim else 0
        return embed + spec.depth * text_block_params(spec) + 2 * w + proj
    w = spec.width
    total = spec.in_chans * spec.patch_size**2 * w + w  # patch embedding conv + bias
    total += w * int(spec.class_token)
    if spec.abs_pos_embed or spec.pos == "abs":
        total += spec.num_tokens * w
    total += spec.depth * vision_block_params(spec)
    total += _norm_params(spec, w)  # final norm
    if spec.embed_dim:
        total += w * spec.embed_dim + spec.embed_dim  # projection head (with bias)
    return total


def mim_head_params(spec: TowerSpec, target_dim: int) -> int:
    """The MIM student's extras: [MASK] token + linear head to the target dim."""
    return spec.width + spec.width * target_dim + target_dim


def mim_target_dim(teacher: RungSpec | TowerSpec | None, student: TowerSpec) -> int:
    """Width of the MIM target: the teacher CLIP's embedding dim, since the target is its patch
    tokens after the final norm and the CLIP head (EVA-02; BAAI's ``EVA-02/asuka`` sizes the head
    by ``visual.output_dim``). Without a teacher (cost studies): the student's width."""
    if teacher is None:
        return student.width
    vision = getattr(teacher, "vision", teacher)  # a rung or its vision tower
    return vision.embed_dim or vision.width


def teacher_forward_flops(teacher: RungSpec | TowerSpec) -> float:
    """The frozen teacher's forward per sample: its tower, with the CLIP head run on every patch
    token (the MIM target) instead of on the pooled one."""
    vision = getattr(teacher, "vision", teacher)
    extra = 2.0 * (vision.num_patches - 1) * vision.width * vision.embed_dim if vision.embed_dim else 0.0
    return forward_flops(vision) + extra


def clip_params(rung: RungSpec) -> int:
    """Vision + text + the temperature."""
    if rung.text is None:
        raise ValueError(f"{rung.name} has no text tower (MIM-only)")
    return params(rung.vision) + params(rung.text) + 1


def _block_macs(width: int, hidden: int, n_mlp_in: int, tokens: float) -> float:
    linear = (4 * width * width + (n_mlp_in + 1) * width * hidden) * tokens
    attention = 2 * tokens * tokens * width  # QK^T and AV
    return linear + attention


def forward_macs(
    spec: AnySpec, image_size: int | None = None, tokens: float | None = None
) -> float:
    """Multiply-adds of one forward pass of one sample (see the module docstring)."""
    if _is_text(spec):
        t = spec.context_length if tokens is None else tokens
        macs = spec.depth * _block_macs(spec.width, spec.mlp_hidden, 1, t)
        return macs + (spec.width * spec.embed_dim if spec.embed_dim else 0)
    size = spec.image_size if image_size is None else image_size
    if size % spec.patch_size:
        raise ValueError(f"image_size {size} is not a multiple of patch_size {spec.patch_size}")
    patches = (size // spec.patch_size) ** 2
    t = patches + int(spec.class_token) if tokens is None else tokens
    n_in = 2 if spec.mlp == "swiglu" else 1
    macs = patches * spec.in_chans * spec.patch_size**2 * spec.width
    macs += spec.depth * _block_macs(spec.width, spec.mlp_hidden, n_in, t)
    if spec.embed_dim:
        macs += spec.width * spec.embed_dim
    return macs


def forward_flops(
    spec: AnySpec, image_size: int | None = None, tokens: float | None = None
) -> float:
    """Forward FLOPs per sample = 2 x multiply-adds, at ``image_size`` (default: the spec's).

    ``tokens`` overrides the sequence length through the blocks (e.g. after patch dropout).
    """
    return 2.0 * forward_macs(spec, image_size, tokens)


def eva02_gflops(spec: TowerSpec) -> float:
    """The EVA-02 paper's GFLOPs: billions of multiply-adds at 196 patch tokens + class token."""
    patches = 196
    t = patches + int(spec.class_token)
    n_in = 2 if spec.mlp == "swiglu" else 1
    macs = patches * spec.in_chans * spec.patch_size**2 * spec.width
    macs += spec.depth * _block_macs(spec.width, spec.mlp_hidden, n_in, t)
    return macs / 1e9


def _kept_tokens(spec: TowerSpec, patch_dropout: float) -> float:
    if not 0.0 <= patch_dropout < 1.0:
        raise ValueError(f"patch_dropout must be in [0, 1); got {patch_dropout}")
    return spec.num_patches * (1.0 - patch_dropout) + int(spec.class_token)


def train_flops(
    rung: RungSpec,
    kind: str,
    samples: float,
    patch_dropout: float = 0.0,
    mask_ratio: float = 0.4,
    teacher: RungSpec | TowerSpec | None = None,
) -> float:
    """Training FLOPs for ``samples`` samples seen (3 x forward for trained towers).

    ``clip``: vision tower (with patch dropout) + text tower. ``mim``: the student tower on
    every token, its head (to the teacher's embedding dim) on the masked ones, plus the frozen
    ``teacher``'s vision tower forward with its CLIP head on every patch (not counted when
    ``teacher`` is None, e.g. with cached targets).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if samples < 0:
        raise ValueError(f"samples must be >= 0; got {samples}")
    if kind == "clip":
        if rung.text is None:
            raise ValueError(f"{rung.name} has no text tower; a clip stage needs a CLIP rung")
        per_sample = forward_flops(rung.vision, tokens=_kept_tokens(rung.vision, patch_dropout))
        per_sample += forward_flops(rung.text)
        return 3.0 * per_sample * samples
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1]; got {mask_ratio}")
    student = rung.mim
    target_dim = mim_target_dim(teacher, student)
    per_sample = forward_flops(student)
    per_sample += 2.0 * mask_ratio * student.num_patches * student.width * target_dim
    total = 3.0 * per_sample
    if teacher is not None:
        total += teacher_forward_flops(teacher)
    return total * samples


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
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
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
    if kind == "clip":
        if rung.text is None:
            raise ValueError(f"{rung.name} has no text tower; a clip stage needs a CLIP rung")
        vision, n_params = rung.vision, clip_params(rung)
        v_tokens = _kept_tokens(vision, patch_dropout)
    else:
        vision = rung.mim
        teacher_width = mim_target_dim(teacher, vision)  # the MIM target's width
        n_params = params(vision) + mim_head_params(vision, teacher_width)
        v_tokens = vision.num_tokens
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
    towers = [(vision.width, vision.mlp_hidden, vision.depth, vision.mlp, vision.ln_mode == "sub", v_tokens)]
    largest = max(vision.width * vision.mlp_hidden, vision.width * (vision.embed_dim or 0))
    if kind == "clip":
        t = rung.text
        towers.append((t.width, t.mlp_hidden, t.depth, "gelu", False, t.context_length))
        largest = max(largest, t.vocab_size * t.width, t.width * t.mlp_hidden)
        # fp32 logits against the global batch, and their gradient
        extra = 2 * 4.0 * micro_batch * micro_batch * gpus
    else:
        largest = max(largest, vision.width * teacher_width)
        # teacher targets and student predictions, fp32
        extra = 4.0 * micro_batch * vision.num_patches * teacher_width * 2
    mode = "fp32" if not mixed else ("half" if deepspeed else "autocast")
    # autocast casts the matmul weights, not the embedding tables
    embeddings = rung.text.vocab_size * rung.text.width if kind == "clip" else 0
    weight_cache = 2.0 * (n_params - embeddings) if mode == "autocast" else 0.0
    activation_bytes = _activation_bytes(
        towers, micro_batch, grad_checkpointing, mode, weight_cache, largest * param_bytes
    ) + extra
    out = {
        "weights": float(weight_bytes),
        "grads": float(grad_bytes),
        "optimizer": float(optim_bytes),
        "activations": float(activation_bytes),
    }
    if kind == "mim" and teacher is not None:
        out["teacher"] = float(params(teacher.vision) * param_bytes)
    out["total"] = float(sum(out.values()))
    return out


def config_memory(cfg, rung: RungSpec, teacher: RungSpec | None, gpus: int, micro_batch: int) -> dict[str, float]:
    """``memory_per_gpu`` with the precision, checkpointing, ZeRO stage, optimizer, engine and
    patch dropout a resolved stage config (``scaling.config``) sets: the one place where the
    ladder's plan and ``python -m scaling.rungs`` read those defaults."""
    kind = str(cfg.stage.kind)
    deepspeed = bool(cfg.distributed.deepspeed)
    return memory_per_gpu(
        rung, kind, gpus, micro_batch, int(cfg.distributed.zero_stage) if deepspeed else 0,
        precision=str(cfg.train.precision), grad_checkpointing=bool(cfg.model.grad_checkpointing),
        optimizer=str(cfg.optim.name), patch_dropout=float(cfg.model.patch_dropout) if kind == "clip" else 0.0,
        teacher=teacher if kind == "mim" else None, deepspeed=deepspeed,
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
