"""Optimiser step alone: the toolkit's optimisers (as ``scaling.train.optim.build_optimizer``
makes them) against other implementations of the same update, on a real model's parameter groups.

    python benchmarks/bench_optim.py                          # proxy CLIP B16 at width 384
    python benchmarks/bench_optim.py --kind mim --width 512 --json out/optim.json

The parameter groups are the toolkit's (per tower and layer, with layer decay) for the proxy
model at ``--width``; gradients are random. Sides, interleaved: the toolkit's LAMB and AdamW,
timm LAMB (its default, and with ``foreach=True``), torch AdamW with ``foreach=True`` and with ``fused=True``, and
``clip_grad_norm_`` for scale. Ratios are each side's time / the toolkit's optimiser of that kind.
At the proxy sizes the CLIP's text token embedding (vocab x width) holds most parameters, so
the optimiser step is a large part of a training step.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--kind", default="clip", choices=kind_names())
    parser.add_argument("--width", type=int, default=384, help="vision/text width, multiple of 64 (384)")
    parser.add_argument("--rung", default="B16", help="proxy rung (B16)")
    add_common_args(parser, repeats=5, warmup=1)
    args = parser.parse_args(argv)
    check_common_args(parser, args)
    if args.width < 64 or args.width % 64:
        parser.error(f"--width must be a multiple of 64; got {args.width}")

    import torch
    from steps import stage_config, toolkit_step, width_overrides
    from timm.optim import Lamb

    from scaling.train.optim import build_optimizer

    threads = set_threads(args.threads)
    setup = toolkit_step(stage_config(args.kind, args.rung, 2, width_overrides(args.width, text=args.kind == "clip")))
    template = setup.extras["stage"].engine.optimizer.param_groups
    params = [p for g in template for p in g["params"]]
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    keep = ("params", "name", "tower", "lr_scale", "peak_lr", "lr", "weight_decay")
    cfg = setup.cfg

    def groups() -> list[dict]:
        return [{k: g[k] for k in keep if k in g} for g in template]

    betas, eps = tuple(cfg.optim.betas), cfg.optim.eps
    opts = {
        "toolkit_lamb": build_optimizer("lamb", groups(), betas, eps),
        "toolkit_adamw": build_optimizer("adamw", groups(), betas, eps),
        "timm_lamb": Lamb(groups(), lr=1e-3, betas=betas, eps=eps, max_grad_norm=None),
        "timm_lamb_foreach": Lamb(groups(), lr=1e-3, betas=betas, eps=eps, max_grad_norm=None, foreach=True),
        "adamw_foreach": torch.optim.AdamW(groups(), lr=1e-3, betas=betas, eps=eps, foreach=True),
        "adamw_fused": torch.optim.AdamW(groups(), lr=1e-3, betas=betas, eps=eps, fused=True),
    }
    sides = {name: opt.step for name, opt in opts.items()}
    sides["clip_grad_norm"] = lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)
    times = interleaved(sides, args.repeats, args.warmup)
    med = {k: median(v) for k, v in times.items()}
    # LAMB sides against the toolkit's LAMB, the rest (the toolkit's LAMB included: what LAMB's
    # trust ratios cost over plain AdamW) against the toolkit's AdamW
    base = {"timm_lamb": "toolkit_lamb", "timm_lamb_foreach": "toolkit_lamb"}
    ratios = {k: med[k] / med[base.get(k, "toolkit_adamw")] for k in med}
    cmed = {k: median(v) for k, v in times.cpu.items()}
    ratios_cpu = {k: cmed[k] / cmed[base.get(k, "toolkit_adamw")] for k in cmed}
    inputs = {"kind": args.kind, "rung": args.rung, "proxy": True, "width": args.width, "threads": threads,
              "params": sum(p.numel() for p in params), "tensors": len(params), "groups": len(template)}
    info = machine()
    print(f"machine: {info}")
    print_header("optimiser step: toolkit vs other implementations", inputs)
    print_timings(times)
    for k in ratios:
        ref = base.get(k, "toolkit_adamw")
        print(f"   {k} / {ref} = {ratios[k]:.3f}x wall, {ratios_cpu[k]:.3f}x CPU time")
    write_json(args.json, {"benchmark": "optim", "machine": info, "inputs": inputs, "times": as_json(times),
                           "median_s": med, "median_cpu_s": cmed, "ratios": ratios, "ratios_cpu_time": ratios_cpu})
    return 0


if __name__ == "__main__":
    sys.exit(main())
