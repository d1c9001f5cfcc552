"""Where each model parameter lies in the flat partitions DeepSpeed ZeRO hands the optimizer.

LAMB's trust ratio is per model parameter; from ZeRO stage 1 on, the client optimizer steps one
flat fp32 tensor per rank and parameter group (stages 1-2) or sub-group (stage 3) instead. These
functions read DeepSpeed's own bookkeeping to map the flat tensors back to parameters, so that
``Lamb.shard`` can keep the ratios per parameter. They read DeepSpeed internals (checked on
0.19): ``check_layouts`` verifies the map against the model once, with one all-reduce, and a
changed layout stops the stage with a message instead of training with wrong ratios.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from scaling.train.lamb import FlatLayout, Lamb


class ZeroLayoutError(RuntimeError):
    """DeepSpeed's ZeRO bookkeeping is not what this module reads."""


def zero_layouts(zero_optimizer: Any, stage: int) -> list[tuple[torch.Tensor, FlatLayout]]:
    """``(flat tensor, layout)`` for every flat partition the client optimizer will step."""
    try:
        return _stage3(zero_optimizer) if stage == 3 else _stage12(zero_optimizer)
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise ZeroLayoutError(_unreadable(stage, repr(exc))) from exc


def _stage12(opt: Any) -> list[tuple[torch.Tensor, FlatLayout]]:
    out = []
    for i, flat in enumerate(opt.single_partition_of_fp32_groups):
        group = opt.real_dp_process_group[i]
        rank = dist.get_rank(group=group)
        parts = [t.numel() for t in opt.parallel_partitioned_bit16_groups[i]]
        lo = sum(parts[:rank])
        hi = lo + parts[rank]
        order, offsets, sizes = _flattening(opt, i)
        segments = []
        for index, offset, size in zip(order, offsets, sizes, strict=True):
            start, end = max(offset, lo), min(offset + size, hi)
            if start < end:
                segments.append((index, start - lo, end - lo))
        out.append((flat, FlatLayout(tuple(segments), len(order), group)))
    return out


def _flattening(opt: Any, i: int) -> tuple[list[int], list[int], list[int]]:
    """Group ``i``'s parameters in DeepSpeed's (possibly round-robin) flattening order: their
    positions in the group (the same on every rank), offsets in the flat buffer and sizes."""
    order = list(opt.round_robin_bit16_indices[i])
    tensors = getattr(opt, "round_robin_bit16_meta", None) or opt.round_robin_bit16_groups
    sizes = [t.numel() for t in tensors[i]]
    if hasattr(opt, "round_robin_bit16_offsets"):
        offsets = list(opt.round_robin_bit16_offsets[i])
    else:  # releases without per-parameter alignment padding pack parameters back to back
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    return order, offsets, sizes


def _stage3(opt: Any) -> list[tuple[torch.Tensor, FlatLayout]]:
    out = []
    for sub, params in enumerate(opt.fp16_groups):
        flat = opt.fp32_partitioned_groups_flat[sub]
        group = opt.sub_group_process_groups[sub]
        rank = dist.get_rank(group=group)
        segments, offset = [], 0
        # Every rank holds an equal piece of every parameter; the last rank's is padded.
        for index, param in enumerate(params):
            piece = param.partition_numel()
            real = min(max(param.ds_numel - rank * piece, 0), piece)
            segments.append((index, offset, offset + real))
            offset += piece
        out.append((flat, FlatLayout(tuple(segments), len(params), group)))
    return out


def check_layouts(layouts: list[tuple[torch.Tensor, FlatLayout]], zero_optimizer: Any,
                  stage: int) -> None:
    """Every parameter's pieces, summed over ranks, must cover exactly its elements."""
    sizes = _param_sizes(zero_optimizer, stage)
    for (flat, layout), expected in zip(layouts, sizes, strict=True):
        # The last entry counts pieces past their partition's end; every rank takes part in the
        # all-reduce before any raises, so a problem on one rank stops all of them.
        covered = torch.zeros(layout.num_params + 1, dtype=torch.float64)
        for index, start, end in layout.segments:
            covered[index] += end - start
            covered[-1] += end > flat.numel()
        if dist.is_initialized():
            covered = covered.to(flat.device)  # NCCL reduces GPU tensors only
            dist.all_reduce(covered, group=layout.group)
        if covered[-1] > 0:
            raise ZeroLayoutError(_unreadable(stage, "a piece ends past its partition"))
        if covered[:-1].tolist() != [float(n) for n in expected]:
            raise ZeroLayoutError(_unreadable(stage, "the pieces do not add up to the parameters"))


def _param_sizes(opt: Any, stage: int) -> list[list[int]]:
    """Sizes from the model's parameters themselves, not from the bookkeeping being checked."""
    if stage == 3:
        return [[p.ds_numel for p in params] for params in opt.fp16_groups]
    return [[p.numel() for p in params] for params in opt.bit16_groups]


def shard_lamb(lamb: Lamb, zero_optimizer: Any, stage: int) -> int:
    """Register every ZeRO partition with ``lamb``; returns how many were registered."""
    layouts = zero_layouts(zero_optimizer, stage)
    check_layouts(layouts, zero_optimizer, stage)
    for flat, layout in layouts:
        lamb.shard(flat, layout)
    return len(layouts)


def _unreadable(stage: int, detail: str) -> str:
    # deepspeed: only when a ZeRO checkpoint is read
    import deepspeed

    return (f"LAMB under DeepSpeed ZeRO-{stage}: cannot map DeepSpeed {deepspeed.__version__}'s "
            f"flat partitions back to parameters ({detail}); per-parameter trust ratios are "
            "implemented for the ZeRO bookkeeping of deepspeed 0.19 (see pyproject.toml). Install "
            "that, or set optim.name=adamw or distributed.zero_stage=0.")
