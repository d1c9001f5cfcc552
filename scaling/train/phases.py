"""A stage's phases as the training loop runs them: consecutive step ranges with their own batch
layout, patch dropout and image size (``config.stage_phases`` reads them from the config)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from timm.layers import PatchDropoutWithIndices

from scaling.batching import batch_layout
from scaling.config import Phase, first_resize
from scaling.train.errors import StageConfigError


def phase_key(cfg: DictConfig, index: int) -> str:
    """Where phase ``index``'s settings are written: ``phases[i]``, or ``train`` without phases."""
    return f"phases[{index}]" if cfg.phases else "train"


def phase_layout(batch: int, micro_batch: int | None, world: int, where: str = "train") -> tuple[int, int]:
    """(micro batch per process, accumulation steps) for a global batch of ``batch``."""
    micro, accum, divides = batch_layout(batch, world, micro_batch)
    if not divides:
        raise StageConfigError(
            f"{where}.batch_size={batch} is not a multiple of micro batch ({micro}) x processes ({world}); "
            f"set {where}.micro_batch or the batch size so that it divides")
    return micro, accum


def phase_at(phases: list[Phase], ends: list[int], step: int) -> Phase:
    """The phase that optimiser step ``step`` (0-based, about to be taken) belongs to."""
    return next((p for p, end in zip(phases, ends, strict=True) if step < end), phases[-1])


def check_phase_sizes(cfg: DictConfig, phases: list[Phase], base_size: int, patch: int) -> None:
    """Every phase's image size fits the tower's patches, and only a run without DeepSpeed changes it."""
    for phase in phases:
        size = phase.size(base_size)
        if size % patch:
            raise StageConfigError(f"{phase_key(cfg, phase.index)}.image_size={size} is not a multiple of the "
                                   f"tower's patch size ({patch})")
    resize = first_resize(phases, base_size)
    if resize and cfg.distributed.deepspeed:
        phase, first, size = resize
        raise StageConfigError(
            f"{phase_key(cfg, phase.index)}.image_size={size}: a phase that changes the image size ({first} -> "
            f"{size}) runs without DeepSpeed (distributed.deepspeed=false; DDP on several processes): DeepSpeed "
            "keeps the weights and optimizer state in flat buffers sized when its engine starts, "
            "which the resampled position table no longer fits. Or run the new size as its own "
            "clip stage (data.image_size, inputs.init_vision/init_text from this one)")


def set_patch_dropout(module: torch.nn.Module, rate: float) -> None:
    """Set the patch dropout of every timm ``Eva`` trunk in ``module`` (a phase boundary)."""
    for sub in module.modules():
        if hasattr(sub, "patch_drop") and hasattr(sub, "num_prefix_tokens"):
            # None at 0, as a tower built without dropout: no module, no random numbers drawn
            sub.patch_drop = PatchDropoutWithIndices(rate, num_prefix_tokens=sub.num_prefix_tokens) \
                if rate > 0 else None
