"""Model FLOPs per sample and the peak they are measured against (MFU)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from scaling.costs import GPU_PEAK_FLOPS, train_flops


def cpu_peak_flops(threads: int | None = None) -> float:
    """Rough fp32 peak of the CPU threads torch uses: threads x clock x FLOPs per cycle, where a core
    does 2 FMA units x SIMD lanes x 2 (64 with AVX-512, 32 with AVX2+FMA, 8 otherwise) and the clock
    is the highest of ``cpuinfo_max_freq`` and ``/proc/cpuinfo``'s MHz (2.5 GHz if unknown)."""
    threads = threads or torch.get_num_threads()
    flags, mhz = "", 0.0
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags") and not flags:
                flags = line
            elif line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError, ValueError):
        mhz = max(mhz, int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000)
    words = set(flags.split())
    per_cycle = 64 if "avx512f" in words else 32 if {"avx2", "fma"} <= words else 8
    return threads * (mhz or 2500.0) * 1e6 * per_cycle


def peak_flops(configured: float | None, device: torch.device, gpu: str) -> tuple[float, str]:
    """Per-process peak FLOP/s for MFU, and where it came from."""
    if configured:
        return float(configured), "train.peak_flops"
    if device.type == "cuda" and gpu in GPU_PEAK_FLOPS:
        return GPU_PEAK_FLOPS[gpu], f"GPU table ({gpu})"
    return cpu_peak_flops(), f"CPU estimate ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def flops_per_sample(kind: str, rung, patch_dropout: float, mask_ratio: float, teacher_spec=None) -> float:
    """Training FLOPs of one sample (3 x forward for trained towers, + the frozen teacher's forward,
    ``teacher_spec`` at the image size it is fed)."""
    flops = train_flops(rung, kind, 1, patch_dropout=patch_dropout, mask_ratio=mask_ratio,
                        teacher=teacher_spec)
    return float(flops)
