"""GPU train step: EVA-02-CLIP-L/14 (full size) in bf16, FlashAttention-2 vs torch SDPA, MFU
against the GPU's dense bf16 peak.

    python benchmarks/bench_gpu.py                         # on a CUDA machine (H100: target >= 45 %)
    python benchmarks/bench_gpu.py --batch 64 --json out/gpu.json

Both sides are the toolkit's step (``TrainingLoop.train_step``, plain torch engine, the L14 CLIP
recipe: LAMB, layer decay, 50 % patch dropout) with ``model.attn=flash`` and
``model.attn=sdpa``, repeats interleaved. MFU = cost-model FLOPs per step / step time / peak
(``scaling.costs.GPU_PEAK_FLOPS``, picked from the device name, or ``--peak-tflops``).
Without CUDA it prints why and exits 0 (nothing to measure); ``--cpu-smoke`` runs the same code
on the CPU proxy (sdpa vs math) to check the program itself.

``--memory`` instead measures each memory part of real-size steps on the GPU
(``torch.cuda.max_memory_allocated`` above what was allocated before the forward) beside
``scaling.costs``' prediction: ``benchmarks/bench_memory.py``'s cases and flags, on CUDA.

    python benchmarks/bench_gpu.py --memory     # B16 CLIP + L14 MIM, micro-batch 2/4/8, ckpt on/off, fp32/bf16
    python benchmarks/bench_gpu.py --memory --micro 32 64 --precision bf16
"""

from __future__ import annotations

import argparse
import sys

from common import (
    add_common_args,
    as_json,
    check_common_args,
    interleaved,
    machine,
    median,
    print_header,
    print_timings,
    set_threads,
    write_json,
)

TARGET = 0.45


def gpu_peak(name: str) -> tuple[float | None, str]:
    from scaling.costs import GPU_PEAK_FLOPS

    lowered = name.lower()
    for key, tag in (("h100", "h100-80gb"), ("h200", "h100-80gb"), ("a100", "a100-80gb")):
        if key in lowered:  # H200: same dense bf16 tensor-core peak as H100 SXM
            return GPU_PEAK_FLOPS[tag], tag
    return None, "unknown"


def memory_main(argv: list[str]) -> int:
    """``--memory``: bench_memory's cases on the GPU."""
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU memory benchmark needs one (benchmarks/bench_memory.py measures "
              "on the CPU); skipped")
        return 0
    import bench_memory

    return bench_memory.main(argv, device="cuda")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--memory" in argv:
        argv.remove("--memory")
        return memory_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--rung", default="L14", help="rung, full size (L14 = EVA-02-CLIP-L/14)")
    parser.add_argument("--batch", type=int, default=128, help="batch per step (128)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak, if not in the table")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra stage config override (repeatable), e.g. model.grad_checkpointing=true")
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU: run the proxy on CPU (sdpa vs math)")
    parser.add_argument("--memory", action="store_true",
                        help="measure memory per part instead (bench_memory.py's flags follow)")
    add_common_args(parser, repeats=10, warmup=3)
    args = parser.parse_args(argv)
    check_common_args(parser, args)

    import torch

    info = {"benchmark": "gpu", "target": TARGET}
    if not torch.cuda.is_available() and not args.cpu_smoke:
        msg = "no CUDA device: the GPU benchmark needs one (run it on a GPU machine); skipped"
        print(msg)
        write_json(args.json, {**info, "machine": machine(), "skipped": msg})
        return 0

    from steps import stage_config, toolkit_step

    threads = set_threads(args.threads)
    if args.cpu_smoke:
        device, proxy, attns, precision = torch.device("cpu"), True, ("sdpa", "math"), "fp32"
        batch, peak, peak_src = min(args.batch, 32), None, "none (CPU smoke run)"
    else:
        device, proxy, attns, precision = torch.device("cuda"), False, ("flash", "sdpa"), "bf16"
        batch = args.batch
        peak, peak_src = gpu_peak(torch.cuda.get_device_name(device))
        if args.peak_tflops:
            peak, peak_src = args.peak_tflops * 1e12, "--peak-tflops"
        torch.backends.cuda.matmul.allow_tf32 = True
    overrides = [f"train.precision={precision}", *args.override]
    setups = {}
    try:
        for attn in attns:
            cfg = stage_config("clip", args.rung, batch, [*overrides, f"model.attn={attn}"], proxy=proxy)
            setups[attn] = toolkit_step(cfg, device)
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        times = interleaved({a: s.step for a, s in setups.items()}, args.repeats, args.warmup, sync=sync)
    except torch.cuda.OutOfMemoryError:
        print(f"error: batch {batch} does not fit this GPU; use --batch smaller or "
              "--override model.grad_checkpointing=true", file=sys.stderr)
        return 2
    first = next(iter(setups.values()))
    flops = first.flops_per_step
    results = {}
    for attn, xs in times.items():
        t = median(xs)
        results[attn] = {"median_s": t, "flops_per_s": flops / t, "mfu": flops / t / peak if peak else None}
    inputs = {"rung": args.rung, "proxy": proxy, "batch": batch, "precision": precision, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "peak_flops": peak, "peak_source": peak_src, "threads": threads,
              "optimizer": first.cfg.optim.name, "patch_dropout": first.cfg.model.patch_dropout,
              "model_flops_per_step": flops}
    print_header("GPU train step: flash vs sdpa" if device.type == "cuda" else "CPU smoke: sdpa vs math", inputs)
    print_timings(times)
    a, b = attns
    speedup = results[b]["median_s"] / results[a]["median_s"]
    for attn, r in results.items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"   {attn}: {r['flops_per_s'] / 1e12:.2f} TFLOP/s, MFU {mfu}")
    print(f"   {a} speed-up over {b}: {speedup:.3f}x")
    if device.type == "cuda" and torch.cuda.is_available():
        print(f"   peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    write_json(args.json, {**info, "machine": machine(), "inputs": inputs, "times": as_json(times), "results": results,
                           "speedup": speedup, "meets_target": (results[a]["mfu"] or 0) >= TARGET if peak else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
