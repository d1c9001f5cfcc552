"""EVA vision towers on timm's ``Eva``: kwargs from a ``TowerSpec``, attention backends, init."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
from timm.layers import LayerNorm, RmsNorm
from timm.models.eva import Eva
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from scaling.models.specs import TowerSpec

ATTENTION_BACKENDS = ("sdpa", "math", "flash")


class AttentionBackendError(RuntimeError):
    """The requested attention backend cannot run with this device/dtype/installation."""


def eva_kwargs(
    spec: TowerSpec, *, patch_dropout: float = 0.0, drop_path: float = 0.0
) -> dict[str, Any]:
    """timm ``Eva`` keyword arguments that build the tower ``spec`` describes."""
    return dict(
        img_size=spec.image_size,
        patch_size=spec.patch_size,
        in_chans=spec.in_chans,
        num_classes=spec.embed_dim or 0,  # Eva's head is the CLIP projection (as open_clip uses it)
        global_pool="token" if spec.class_token else "avg",
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.heads,
        qkv_bias=spec.qkv_bias,
        qkv_fused=spec.qkv_fused,
        # Eva takes a ratio and floors width * ratio; +0.5 makes the floor land on mlp_hidden
        mlp_ratio=(spec.mlp_hidden + 0.5) / spec.width,
        swiglu_mlp=spec.mlp == "swiglu",
        scale_mlp=spec.ln_mode == "sub",
        scale_attn_inner=spec.ln_mode == "sub" and spec.sub_ln_attn,
        use_post_norm=spec.ln_mode == "post",
        norm_layer=RmsNorm if spec.norm == "rmsnorm" else LayerNorm,
        class_token=spec.class_token,
        use_abs_pos_emb=spec.abs_pos_embed or spec.pos == "abs",
        use_rot_pos_emb=spec.pos == "rope",
        ref_feat_shape=spec.rope_ref_grid if spec.pos == "rope" else None,
        # open_clip builds EVA towers without fc_norm (token pooling); keep avg pooling alike
        use_fc_norm=False,
        patch_drop_rate=patch_dropout,
        drop_path_rate=drop_path,
    )


def check_attention(attn: str, device: torch.device | str) -> None:
    """Fail early, with the reason, when ``attn`` cannot run on ``device``."""
    if attn not in ATTENTION_BACKENDS:
        raise AttentionBackendError(f"attn='{attn}' is not one of {', '.join(ATTENTION_BACKENDS)}")
    if attn != "flash":
        return
    dev = torch.device(device)
    if dev.type == "meta":
        return  # nothing runs on meta; let cost/shape studies build it anywhere
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise AttentionBackendError(
            f"attn='flash' needs a CUDA GPU (got device '{dev}'); use attn='sdpa' (default) or 'math' on CPU"
        )
    # torch ships FlashAttention-2 as an SDPA kernel, so the flash-attn package is not needed
    if not torch.backends.cuda.is_flash_attention_available():
        raise AttentionBackendError(
            "attn='flash' needs torch's FlashAttention-2 kernel, which this torch build lacks; "
            "use attn='sdpa'"
        )
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        raise AttentionBackendError(
            f"attn='flash' needs an Ampere or newer GPU (compute capability >= 8.0; this one is "
            f"{major}.{minor}); use attn='sdpa'"
        )


class EvaVisionTower(nn.Module):
    """A timm ``Eva`` (``.trunk``, keys as in open_clip's EVA CLIPs) plus token access.

    ``forward`` returns the pooled, projected embedding (or the pooled width-wide feature
    when the spec has no ``embed_dim``); ``forward_tokens`` the final normed tokens;
    ``forward_aligned_tokens`` the projected patch tokens (the MIM target).
    """

    def __init__(
        self,
        spec: TowerSpec,
        *,
        attn: str = "sdpa",
        patch_dropout: float = 0.0,
        drop_path: float = 0.0,
        subln_rescale: bool = False,
    ):
        super().__init__()
        self.spec = spec
        self.trunk = Eva(**eva_kwargs(spec, patch_dropout=patch_dropout, drop_path=drop_path))
        self.attn_backend = "sdpa"
        self.set_attention(attn)
        if spec.init == "xavier":
            xavier_init(self.trunk)
        if subln_rescale and spec.ln_mode == "sub":
            subln_init_rescale(self.trunk)

    @property
    def num_layers(self) -> int:
        return self.spec.depth

    def set_attention(self, attn: str) -> None:
        if attn not in ATTENTION_BACKENDS:
            raise AttentionBackendError(
                f"attn='{attn}' is not one of {', '.join(ATTENTION_BACKENDS)}"
            )
        self.attn_backend = attn
        for block in self.trunk.blocks:
            if hasattr(block.attn, "fused_attn"):
                block.attn.fused_attn = attn != "math"

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def set_image_size(self, image_size: int) -> tuple[nn.Parameter, nn.Parameter] | None:
        """Run at ``image_size`` from now on (timm's ``set_input_size``): the absolute position
        table is resampled to the new grid (a new parameter) and the RoPE tables are rebuilt for it.

        Returns ``(old, new)`` position-table parameters when the table changed (an optimizer that
        holds ``old`` must move to ``new``), else None."""
        if image_size % self.spec.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {self.spec.patch_size}")
        if image_size == self.spec.image_size:
            return None
        old = self.trunk.pos_embed
        self.trunk.set_input_size(img_size=(image_size, image_size))
        self.spec = dataclasses.replace(self.spec, image_size=image_size)
        new = self.trunk.pos_embed
        return None if old is None or new is old else (old, new)

    def attention_context(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        """Restrict SDPA to the FlashAttention-2 kernel when ``attn='flash'``."""
        if self.attn_backend != "flash":
            return contextlib.nullcontext()

        half = (torch.float16, torch.bfloat16)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        if x.device.type != "cuda" or dtype not in half:
            raise AttentionBackendError(
                f"attn='flash' runs only on CUDA in bf16/fp16 (got {x.device.type}, {dtype}); "
                "use bf16 autocast or attn='sdpa'"
            )
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final normed tokens ``[B, prefix + N, width]`` (N kept patches under patch dropout)."""
        with self.attention_context(images):
            return self.trunk.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_head(self.forward_tokens(images))

    def forward_aligned_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, embed_dim]`` after the final norm *and* the CLIP head: the
        image-text aligned features EVA-02 regresses. Each token takes the path ``forward``
        takes with the pooled one (fc_norm, head), so it lies in the image-text embedding space."""
        if not self.spec.embed_dim:
            raise ValueError("this vision tower has no CLIP projection (spec.embed_dim is 0): its "
                             "tokens are not image-text aligned features")
        trunk = self.trunk
        tokens = self.forward_tokens(images)[:, trunk.num_prefix_tokens :]
        return trunk.head(trunk.head_drop(trunk.fc_norm(tokens)))

    def no_weight_decay(self) -> set[str]:
        return {f"trunk.{n}" for n in self.trunk.no_weight_decay()}


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every linear layer (EVA-CLIP-18B style)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# Parameter names (timm's) that BAAI's sub-LN rescale multiplies: its SwiGLU's w1/w2/w3 are timm's
# mlp.fc1_g/fc1_x/fc2, a GELU MLP's fc1/fc2 the same, and the attention's v and output projections.
_SUBLN_RESCALED = ("mlp.fc", "attn.proj", "attn.v_proj")


def subln_init_rescale(trunk: Eva) -> float:
    """BAAI's EVA-02 MIM init for sub-LN towers: after the xavier init, every block's MLP
    weights, attention output projection and value projection are multiplied by
    ``sqrt(ln(2 * depth))`` (``EVA-02/asuka/modeling_pretrain.py``, ``if subln:``; its ``jax_init``
    towers skip BEiT's ``fix_init_weight`` 1/sqrt(2 * layer_id)). Returns the factor."""
    scale = math.sqrt(math.log(2 * len(trunk.blocks)))
    with torch.no_grad():
        for name, param in trunk.named_parameters():
            if name.startswith("blocks.") and any(key in name for key in _SUBLN_RESCALED):
                param.mul_(scale)
        for block in trunk.blocks:
            qkv = getattr(block.attn, "qkv", None)
            if isinstance(qkv, nn.Linear):  # a fused qkv: its value third is BAAI's v_proj
                width = qkv.out_features // 3
                qkv.weight[2 * width :].mul_(scale)
                if qkv.bias is not None:
                    qkv.bias[2 * width :].mul_(scale)
    return scale


def vision_layer_id(param_name: str, num_layers: int) -> int:
    """Layer id for layer-wise lr decay: 0 embeddings, i+1 block i, num_layers+1 norm/head.

    Accepts names from the tower, the CLIP (``visual.``), the MIM student (``encoder.``) or a
    bare timm ``Eva``.
    """
    name = param_name
    for prefix in ("module.", "visual.", "encoder.", "trunk."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.startswith(
        ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre", "mask_token", "rope")
    ):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1
