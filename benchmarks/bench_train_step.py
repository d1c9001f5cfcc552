"""Train step vs the machine's limit: achieved model FLOP/s of the toolkit's CLIP and MIM steps
÷ dense ``torch.mm`` FLOP/s on the step's own GEMM shapes, same process, dtype and threads.

    python benchmarks/bench_train_step.py                          # widths 256 384 512, clip+mim
    python benchmarks/bench_train_step.py --kinds clip --widths 384 --json out/step.json

For each kind and width: the proxy rung (``--rung``, default B16) with its vision and text
towers set to that width (64-wide heads, SwiGLU hidden 8/3 x width), the batch doubled until
one step takes >= ``--min-step-ms``, starting from the proxy recipe's batch (or ``--batch``).
Timed, interleaved: one training step
(``TrainingLoop.train_step``: forward, loss, backward, clipping, optimiser, schedule) and one pass of
``torch.mm`` over every GEMM the step runs (forward, input- and weight-gradient of each linear
layer; the frozen teacher's forward). Model FLOPs come from ``scaling.costs`` (2 x multiply-
adds of the matmuls, attention included), so the ratio is an MFU against what this machine's
matmul library really reaches on these shapes. Target: >= 50 % at width >= 384 on CPU.
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

from scaling.kinds import kind_names

TARGET = 0.50


def pick_batch(make, start: int, min_step_s: float, cap: int):
    """Double the batch from ``start`` until one step takes >= ``min_step_s``."""
    import time

    batch = start
    while True:
        setup = make(batch)
        setup.step()  # first call allocates
        t0 = time.perf_counter()
        setup.step()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_step_s or batch * 2 > cap:
            return setup
        batch *= 2


def bench_one(kind: str, width: int, args) -> dict:
    import torch
    from steps import (
        gemm_flops,
        gemm_runner,
        stage_config,
        step_gemms,
        toolkit_step,
        width_overrides,
    )

    overrides = [*width_overrides(width, text=kind == "clip"), *args.override]

    def make(batch: int):
        return toolkit_step(stage_config(kind, args.rung, batch, overrides))

    start = args.batch or stage_config(kind, args.rung, None, overrides).train.batch_size  # the recipe's
    setup = make(start) if args.batch else pick_batch(make, start, args.min_step_ms / 1e3, args.max_batch)
    gemms = step_gemms(setup)
    mm = gemm_runner(gemms, setup.dtype)
    times = interleaved({"train_step": setup.step, "gemms_mm": mm}, args.repeats, args.warmup)
    t_step, t_mm = median(times["train_step"]), median(times["gemms_mm"])
    model_flops = setup.flops_per_step
    gflops = gemm_flops(gemms)
    achieved = model_flops / t_step
    limit = gflops / t_mm
    ratio = achieved / limit
    c_step, c_mm = median(times.cpu["train_step"]), median(times.cpu["gemms_mm"])
    ratio_cpu = (model_flops / c_step) / (gflops / c_mm)
    inputs = {
        "kind": kind, "rung": args.rung, "proxy": True, "width": width, "batch": setup.batch_size,
        "image_size": (setup.rung.mim if kind == "mim" else setup.rung.vision).image_size,
        "depth": setup.rung.vision.depth, "optimizer": setup.extras["optimizer"],
        "patch_dropout": setup.cfg.model.patch_dropout, "precision": setup.cfg.train.precision,
        "dtype": str(setup.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "attn": setup.cfg.model.attn, "gemm_shapes": len(gemms), "gemm_calls": sum(gemms.values()),
    }
    print_header(f"train step vs torch.mm: {kind} width {width}", inputs)
    print_timings(times)
    print(f"   model FLOPs/step {model_flops / 1e9:.3f} G (cost model), GEMM FLOPs/step {gflops / 1e9:.3f} G")
    print(f"   achieved {achieved / 1e9:.2f} GFLOP/s, torch.mm {limit / 1e9:.2f} GFLOP/s "
          f"-> ratio {ratio:.1%} (target >= {TARGET:.0%} at width >= 384); on CPU time {ratio_cpu:.1%}")
    return {"inputs": inputs, "times": as_json(times), "median_s": {"train_step": t_step, "gemms_mm": t_mm},
            "median_cpu_s": {"train_step": c_step, "gemms_mm": c_mm}, "ratio_cpu_time": ratio_cpu,
            "model_flops_per_step": model_flops, "gemm_flops_per_step": gflops,
            "achieved_flops_per_s": achieved, "mm_flops_per_s": limit, "ratio": ratio,
            "meets_target": ratio >= TARGET if width >= 384 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--kinds", nargs="+", default=["clip", "mim"], choices=kind_names())
    parser.add_argument("--widths", nargs="+", type=int, default=[256, 384, 512])
    parser.add_argument("--rung", default="B16", help="proxy rung whose recipe and shapes are used (B16)")
    parser.add_argument("--batch", type=int, default=None, help="fixed batch (default: auto, see --min-step-ms)")
    parser.add_argument("--min-step-ms", type=float, default=100.0, help="auto batch: step time to reach (100)")
    parser.add_argument("--max-batch", type=int, default=1024, help="auto batch: largest batch tried (1024)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra stage config override, e.g. train.precision=bf16 (repeatable)")
    add_common_args(parser, repeats=5, warmup=1)
    args = parser.parse_args(argv)
    check_common_args(parser, args)
    if any(w < 64 or w % 64 for w in args.widths):
        parser.error(f"--widths must be multiples of 64 (64-wide heads); got {args.widths}")

    threads = set_threads(args.threads)
    info = machine()
    print(f"machine: {info}")
    print(f"torch threads: {threads}")
    results = []
    try:
        for kind in args.kinds:
            for width in args.widths:
                results.append(bench_one(kind, width, args))
    except Exception as exc:  # a bad --override or rung: one line, exit 2
        from scaling.config import ConfigError

        if isinstance(exc, (ConfigError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    print("\nsummary (achieved model FLOP/s / torch.mm FLOP/s on the step's GEMMs):")
    for r in results:
        i = r["inputs"]
        print(f"   {i['kind']:4s} width {i['width']:4d} batch {i['batch']:5d}: {r['ratio']:6.1%}  "
              f"(CPU-time ratio {r['ratio_cpu_time']:6.1%}; step {r['median_s']['train_step'] * 1e3:.0f} ms)")
    write_json(args.json, {"benchmark": "train_step", "machine": info, "target": TARGET, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
