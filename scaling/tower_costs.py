"""What one tower costs, whatever the stage trains it for: exact parameter counts and forward
FLOPs (no torch). The conventions are ``scaling.costs``'s; the stage kinds (``scaling.kinds``)
add up these parts into a stage's training FLOPs and memory, and ``scaling.costs`` re-exports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from scaling.models.specs import RungSpec, TextSpec, TowerSpec

    AnySpec = Union[TowerSpec, TextSpec]


def is_text(spec: AnySpec) -> bool:
    return hasattr(spec, "vocab_size")


def norm_params(spec: TowerSpec, dim: int) -> int:
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
        attn += norm_params(spec, w)
    n_in = 2 if spec.mlp == "swiglu" else 1  # SwiGLU: gate and value projections
    mlp = n_in * (w * h + h) + h * w + w
    if sub:
        mlp += norm_params(spec, h)
    return attn + mlp + 2 * norm_params(spec, w)


def text_block_params(spec: TextSpec) -> int:
    w, h = spec.width, spec.mlp_hidden
    return (3 * w * w + 3 * w) + (w * w + w) + (w * h + h) + (h * w + w) + 2 * 2 * w


def params(spec: AnySpec) -> int:
    """Exact parameter count of a tower as built (vision incl. its CLIP projection, if any)."""
    if is_text(spec):
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
    total += norm_params(spec, w)  # final norm
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
    if is_text(spec):
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


def kept_tokens(spec: TowerSpec, patch_dropout: float) -> float:
    if not 0.0 <= patch_dropout < 1.0:
        raise ValueError(f"patch_dropout must be in [0, 1); got {patch_dropout}")
    return spec.num_patches * (1.0 - patch_dropout) + int(spec.class_token)
