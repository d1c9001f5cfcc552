"""EVA CLIP (vision tower + text tower + learnable temperature) and the MIM student."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models._manipulate import checkpoint
from torch import nn

from scaling.models.specs import RungSpec
from scaling.models.vision import EvaVisionTower


class EvaClip(nn.Module):
    """Same module tree and state-dict keys as open_clip's ``CustomTextCLIP`` for EVA models."""

    def __init__(self, spec: RungSpec, visual: EvaVisionTower, text: nn.Module):
        super().__init__()
        self.spec = spec
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return names | {"logit_scale"}


class MimStudent(nn.Module):
    """An EVA tower trained by masked image modeling against a teacher's token features.

    Masked patch embeddings are replaced by a learned [MASK] token before the blocks; the
    final normed tokens go through a linear head to ``target_dim``, the teacher CLIP's
    embedding dim (its projected patch tokens are the target). ``encoder`` has the
    CLIP vision tower's class and parameter names, so its weights initialise a CLIP's visual.
    """

    def __init__(self, encoder: EvaVisionTower, target_dim: int):
        super().__init__()
        self.encoder = encoder
        self.target_dim = target_dim
        width = encoder.spec.width
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.head = nn.Linear(width, target_dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: bool ``[B, N]`` (True = masked). Returns predictions ``[B, N, target_dim]``."""
        trunk = self.encoder.trunk
        x = trunk.patch_embed(images)
        if mask.shape != x.shape[:2]:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match the patch grid {tuple(x.shape[:2])}"
            )
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        with self.encoder.attention_context(images):
            x, rope = trunk._pos_embed(x)
            x = trunk.norm_pre(x)
            for block in trunk.blocks:
                if trunk.grad_checkpointing and self.training:
                    x = checkpoint(block, x, rope=rope)
                else:
                    x = block(x, rope=rope)
        x = trunk.norm(x)
        return self.head(x[:, trunk.num_prefix_tokens :])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}
