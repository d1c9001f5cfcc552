"""The two stage objectives (MIM feature regression, CLIP contrastive), shared by training and eval."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn


def mim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity between predictions and teacher features at masked patches
    (EVA-02). ``pred``/``target``: ``[B, N, C]``; ``mask``: bool ``[B, N]``."""
    p = pred[mask].float()
    t = target[mask].float()
    return -F.cosine_similarity(p, t, dim=-1).mean()


class ContrastiveLoss(nn.Module):
    """open_clip's ClipLoss with features gathered across ranks, local loss and gradients
    through the gather: each rank scores its own images/texts against the global batch, and the
    averaged gradients equal those of the full-batch loss on one process."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()

        self.inner = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                              rank=rank, world_size=world_size)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        return self.inner(image_features.float(), text_features.float(), logit_scale.float())


@torch.no_grad()
def teacher_targets(teacher: nn.Module, images: torch.Tensor, image_size: int) -> torch.Tensor:
    """The teacher CLIP's image-text aligned patch features ``[B, N, embed_dim]``: its patch
    tokens after the final norm and the CLIP head (EVA-02's target: BAAI's ``EVA-02/asuka``
    teacher returns ``head(norm(x)[:, 1:])`` and sizes the student's head by
    ``visual.output_dim``). Images are resized first when the teacher's patch grid needs
    another size."""
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return teacher.forward_aligned_tokens(images)
