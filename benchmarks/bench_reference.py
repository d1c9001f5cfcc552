"""Train step vs a reference: the toolkit's step against the same model config built straight
from timm (``Eva``) and open_clip (``TextTransformer``, ``ClipLoss``) with a plain AdamW step.

    python benchmarks/bench_reference.py                            # clip and mim, width 384
    python benchmarks/bench_reference.py --kinds clip --side adamw=optim.name=adamw --json out/ref.json

Same batch, dtype, threads, patch dropout and model shapes on both sides. The toolkit's step is
``TrainingLoop.train_step`` (its param groups with layer decay, LAMB or AdamW as the recipe says,
gradient clipping, the lr schedule, autocast, the loss read back for logging); the
reference is ``loss.backward(); AdamW.step(); zero_grad()``, timed twice: with torch's default
AdamW (the target's "plain" step; a per-tensor loop on CPU) and with its fused kernel (the
strictest comparison: the toolkit's AdamW is fused too). ``--side NAME=KEY=VALUE[,KEY=VALUE]``
adds a toolkit side with other config overrides, to see what each extra costs. Target: the
toolkit's time <= 1.05 x the reference's.
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

TARGET = 1.05


def parse_side(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name or "=" not in rest:
        raise ValueError(f"--side {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE], e.g. adamw=optim.name=adamw")
    return name, rest.split(",")


def bench_kind(kind: str, args, sides: dict[str, list[str]]) -> dict:
    import torch
    from steps import reference_step, stage_config, toolkit_step, width_overrides

    overrides = [*width_overrides(args.width, text=kind == "clip"), *args.override]
    batch = args.batch or stage_config(kind, args.rung, None, overrides).train.batch_size
    toolkit = toolkit_step(stage_config(kind, args.rung, batch, overrides))
    reference = reference_step(stage_config(kind, args.rung, batch, overrides))
    # The plain reference uses torch's default AdamW; the fused one is the strictest comparison
    # (the toolkit's own AdamW is fused), so both are timed.
    fused = reference_step(stage_config(kind, args.rung, batch, overrides), fused=True)
    runs = {"toolkit": toolkit.step, "reference": reference.step, "reference[fused]": fused.step}
    for name, extra in sides.items():
        runs[f"toolkit[{name}]"] = toolkit_step(stage_config(kind, args.rung, batch, [*overrides, *extra])).step
    times = interleaved(runs, args.repeats, args.warmup)
    med = {k: median(v) for k, v in times.items()}
    mine = [k for k in runs if k.startswith("toolkit")]
    ratios = {k: med[k] / med["reference"] for k in mine}
    cmed = {k: median(v) for k, v in times.cpu.items()}
    ratios_cpu = {k: cmed[k] / cmed["reference"] for k in mine}
    ratios_fused = {k: med[k] / med["reference[fused]"] for k in mine}
    ratios_fused_cpu = {k: cmed[k] / cmed["reference[fused]"] for k in mine}
    cfg = toolkit.cfg
    inputs = {
        "kind": kind, "rung": args.rung, "proxy": True, "width": args.width, "batch": batch,
        "precision": cfg.train.precision, "dtype": str(toolkit.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "patch_dropout": cfg.model.patch_dropout,
        "toolkit_optimizer": cfg.optim.name, "layer_decay": cfg.optim.layer_decay,
        "grad_clip": cfg.optim.grad_clip, "reference_optimizer": "torch.optim.AdamW (defaults)",
        "sides": {k: v for k, v in sides.items()},
    }
    print_header(f"toolkit step vs timm/open_clip + AdamW: {kind}", inputs)
    print_timings(times)
    for k, r in ratios.items():
        print(f"   {k} / reference = {r:.3f}x wall, {ratios_cpu[k]:.3f}x CPU time (target <= {TARGET:.2f}x)")
        print(f"   {k} / reference[fused] = {ratios_fused[k]:.3f}x wall, {ratios_fused_cpu[k]:.3f}x CPU time")
    return {"inputs": inputs, "times": as_json(times), "median_s": med, "median_cpu_s": cmed,
            "ratio": ratios["toolkit"], "ratio_cpu_time": ratios_cpu["toolkit"], "ratios": ratios,
            "ratios_cpu_time": ratios_cpu, "ratios_vs_fused": ratios_fused,
            "ratios_vs_fused_cpu_time": ratios_fused_cpu, "meets_target": ratios["toolkit"] <= TARGET}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--kinds", nargs="+", default=["clip", "mim"], choices=kind_names())
    parser.add_argument("--width", type=int, default=384, help="vision/text width, multiple of 64 (384)")
    parser.add_argument("--rung", default="B16", help="proxy rung whose recipe and shapes are used (B16)")
    parser.add_argument("--batch", type=int, default=None, help="batch (default: the proxy recipe's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="stage config override for every side, e.g. model.patch_dropout=0 (repeatable)")
    parser.add_argument("--side", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                        help="an extra toolkit side with these overrides (repeatable)")
    add_common_args(parser, repeats=5, warmup=1)
    args = parser.parse_args(argv)
    check_common_args(parser, args)
    if args.width < 64 or args.width % 64:
        parser.error(f"--width must be a multiple of 64; got {args.width}")
    try:
        sides = dict(parse_side(s) for s in args.side)
    except ValueError as exc:
        parser.error(str(exc))

    threads = set_threads(args.threads)
    info = machine()
    print(f"machine: {info}")
    print(f"torch threads: {threads}")
    results = []
    try:
        for kind in args.kinds:
            results.append(bench_kind(kind, args, sides))
    except Exception as exc:
        from scaling.config import ConfigError

        if isinstance(exc, (ConfigError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    print("\nsummary (toolkit step time / reference step time):")
    for r in results:
        print(f"   {r['inputs']['kind']:4s} batch {r['inputs']['batch']}: {r['ratio']:.3f}x wall, "
              f"{r['ratio_cpu_time']:.3f}x CPU time; vs the fused-AdamW reference "
              f"{r['ratios_vs_fused']['toolkit']:.3f}x wall, {r['ratios_vs_fused_cpu_time']['toolkit']:.3f}x CPU time")
    write_json(args.json, {"benchmark": "reference", "machine": info, "target": TARGET, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
