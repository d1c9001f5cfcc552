"""``python -m scaling.rungs``: the rungs, their sizes and FLOPs, and what a run would cost.

Imports no torch: the numbers come from ``scaling.costs`` (exact counts, tested against the
built modules).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from scaling import costs
from scaling.batching import batch_layout
from scaling.config import ConfigError, load_stage_config, stage_phases
from scaling.kinds import default_kinds, kind_names, stage_kind
from scaling.ladder.spec import load_ladder
from scaling.models.registry import (
    LADDER_ORDER,
    RungSpec,
    SpecError,
    UnknownRungError,
    get_rung,
    list_rungs,
)

GIB = 2**30


def tower_rows(rung: RungSpec) -> list[dict[str, Any]]:
    """One row per tower: ``vision`` and ``text`` for a CLIP, plus the ``mim`` form."""
    rows = []
    towers = [("vision", rung.vision), ("text", rung.text), ("mim", rung.mim)] if rung.is_clip else [("mim", rung.mim)]
    for kind, spec in towers:
        row: dict[str, Any] = {
            "name": rung.name,
            "alias": rung.alias,
            "proxy": rung.proxy,
            "tower": kind,
            "depth": spec.depth,
            "width": spec.width,
            "heads": spec.heads,
            "mlp_hidden": spec.mlp_hidden,
            "params": costs.params(spec),
            "gflops_fwd": costs.forward_flops(spec) / 1e9,
        }
        if kind == "text":
            row.update(mlp="gelu", context_length=spec.context_length, embed_dim=spec.embed_dim)
        else:
            row.update(mlp=spec.mlp, norm=spec.norm, ln_mode=spec.ln_mode, pos=spec.pos, qkv_bias=spec.qkv_bias,
                       image_size=spec.image_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
                       eva02_gflops=costs.eva02_gflops(spec))
        rows.append(row)
    return rows


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "B" else f"{n / scale:.1f}{unit}"
    return str(int(n))


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'rung':<22} {'alias':<8} {'tower':<6} {'depth':>5} {'width':>5} {'heads':>5} {'MLP':<13} "
              f"{'params':>9} {'GFLOPs':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        mlp = f"{r['mlp']} {r['mlp_hidden']}"
        print(
            f"{r['name']:<22} {r['alias']:<8} {r['tower']:<6} {r['depth']:>5} {r['width']:>5} {r['heads']:>5} "
            f"{mlp:<13} {_human(r['params']):>9} {r['gflops_fwd']:>10.2f}"
        )
    print(
        "\nGFLOPs: forward FLOPs per sample (2 x multiply-adds) at the tower's resolution / context length;"
    )
    print("mim rows count the encoder only (the [MASK] token and head depend on the teacher).")


def _default_teacher(rung: RungSpec) -> RungSpec | None:
    """The rung's MIM teacher as the ladder file says (none for a rung the ladder lacks)."""
    try:
        teacher = load_ladder().rung(rung.name).teacher
    except ConfigError:
        return None
    return get_rung(teacher, rung.proxy) if teacher else None


def _stage_config(kind: str, rung: RungSpec):
    """The stage config the ladder would run (recipes and schema defaults, ``scaling.config``)."""
    # the ladder's key (the alias) names the recipe files, as in a ladder plan
    key = rung.alias if rung.alias in LADDER_ORDER else rung.name
    return load_stage_config(kind, key, proxy=rung.proxy)


def _default_kind(rung: RungSpec) -> str:
    """The last stage a ladder rung trains that this rung can train (clip for a CLIP rung, else mim)."""
    for name in reversed(default_kinds()):
        try:
            stage_kind(name).check_rung(rung)
        except ValueError:
            continue
        return name
    raise ValueError(f"{rung.name}: no stage kind trains it")


def cost_report(args: argparse.Namespace) -> dict[str, Any]:
    rung = get_rung(args.rung, proxy=args.proxy)
    kind = args.kind or _default_kind(rung)
    try:
        stage_kind(kind).check_rung(rung)
    except ValueError as exc:
        raise ValueError(f"{exc} ({rung.name} is MIM-only: use --kind mim)") from None
    cfg = _stage_config(kind, rung)
    res = cfg.resources
    recipe_gpus = int(res.nodes) * int(res.gpus_per_node)
    gpus = args.gpus or recipe_gpus or 8
    gpu = args.gpu or str(res.gpu)
    batch = args.batch or int(cfg.train.batch_size)
    micro, accumulation, divides = batch_layout(
        batch, gpus, args.micro_batch or (None if args.batch else cfg.train.micro_batch))
    micro = max(1, micro)
    samples = args.samples or float(cfg.train.samples)
    if args.patch_dropout is not None:
        cfg.model.patch_dropout = args.patch_dropout
    if args.zero is not None:
        cfg.distributed.zero_stage, cfg.distributed.deepspeed = args.zero, args.zero > 0 or cfg.distributed.deepspeed
    if args.precision:
        cfg.train.precision = args.precision
    if args.grad_checkpointing is not None:
        cfg.model.grad_checkpointing = args.grad_checkpointing
    if args.optimizer:
        cfg.optim.name = args.optimizer
    patch_dropout = float(cfg.model.patch_dropout) if stage_kind(kind).patch_dropout else 0.0
    teacher = (
        get_rung(args.teacher, rung.proxy)
        if args.teacher
        else (_default_teacher(rung) if stage_kind(kind).needs_teacher else None)
    )
    mem = costs.config_memory(cfg, rung, teacher, gpus, micro)
    flops = costs.train_flops(
        rung,
        kind,
        samples,
        patch_dropout=patch_dropout,
        mask_ratio=args.mask_ratio,
        teacher=teacher,
    )
    hours = costs.gpu_hours(flops, gpu, args.mfu)
    return {
        "name": rung.name,
        "alias": rung.alias,
        "kind": kind,
        "teacher": teacher.name if teacher else None,
        "gpus": gpus,
        "gpu": gpu,
        "micro_batch": micro,
        "accumulation": accumulation,
        "global_batch": micro * gpus * max(1, accumulation),
        "divides": divides,
        "zero_stage": int(cfg.distributed.zero_stage) if cfg.distributed.deepspeed else 0,
        "deepspeed": bool(cfg.distributed.deepspeed),
        "precision": str(cfg.train.precision),
        "grad_checkpointing": bool(cfg.model.grad_checkpointing),
        "optimizer": str(cfg.optim.name),
        "patch_dropout": patch_dropout,
        "samples": samples,
        "memory_bytes": mem,
        "fits": costs.fits(mem, gpu),
        "gpu_memory_bytes": costs.GPU_MEMORY_BYTES[gpu],
        "train_flops": flops,
        "mfu": args.mfu,
        "gpu_hours": hours,
        "wall_days": hours / gpus / 24,
        "implied_mfu": (
            costs.implied_mfu(flops, gpus, args.wall_days * 24, gpu)
            if args.wall_days
            else None
        ),
        "wall_days_given": args.wall_days,
        # the ladder's --dry-run computes such a stage phase by phase (see print_report)
        "recipe_phases": [p.name for p in stage_phases(cfg)] if cfg.phases else None,
    }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"{r['name']} ({r['alias']}) {r['kind']} stage"
        + (f", teacher {r['teacher']}" if r["teacher"] else "")
    )
    print(
        f"  {r['gpus']} x {r['gpu']}, micro-batch {r['micro_batch']} x accumulation {r['accumulation']} "
        f"(global {r['global_batch']}{'' if r['divides'] else ', does NOT divide the batch'}), ZeRO-{r['zero_stage']}, "
        f"{r['precision']}, grad checkpointing {'on' if r['grad_checkpointing'] else 'off'}, "
        f"patch dropout {r['patch_dropout']}"
    )
    print("  memory per GPU:")
    for key, value in r["memory_bytes"].items():
        print(f"    {key:<12} {value / GIB:9.2f} GiB")
    verdict = "fits" if r["fits"] else "does NOT fit"
    print(f"  -> {verdict} in {r['gpu_memory_bytes'] / GIB:.0f} GiB ({costs.HEADROOM:.0%} usable assumed)")
    print(f"  training: {_human(r['samples'])} samples, {r['train_flops']:.3g} FLOPs")
    print(
        f"  at MFU {r['mfu']:.0%}: {r['gpu_hours']:,.0f} GPU-hours = {r['wall_days']:.1f} days on {r['gpus']} GPUs"
    )
    if r.get("recipe_phases"):
        print(f"  note: the recipe trains this stage in phases ({' -> '.join(r['recipe_phases'])}); this estimate "
              f"runs all {_human(r['samples'])} samples at patch dropout {r['patch_dropout']:g}, while "
              "`python -m scaling.ladder --dry-run` sums each phase's FLOPs and shows the micro-batch of the "
              "phase that needs the most memory, so the two differ for this stage")
    if r["implied_mfu"] is not None:
        print(f"  a wall time of {r['wall_days_given']:g} days implies MFU {r['implied_mfu']:.1%}")
    else:
        print("  implied MFU: pass --wall-days (the EVA papers do not publish the wall time)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scaling.rungs",
        description="List the EVA ladder's rungs (params, FLOPs) or estimate one run's memory and cost.",
    )
    p.add_argument(
        "--proxy", action="store_true", help="show the CPU proxies instead of the real models"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--rung",
        help=f"estimate memory and cost of one rung (name or alias: {', '.join(LADDER_ORDER)}, ...)",
    )
    g = p.add_argument_group(
        "cost estimate (with --rung); defaults: the stage config the ladder runs (experiments/recipes)"
    )
    g.add_argument("--kind", choices=kind_names(), help="stage kind (default: clip for CLIP rungs)")
    g.add_argument("--gpus", type=int, help="number of GPUs (default: the recipe's nodes x GPUs)")
    g.add_argument("--gpu", choices=sorted(costs.GPU_PEAK_FLOPS), help="GPU type (default: the recipe's)")
    g.add_argument(
        "--batch", type=int, help="global batch (default: the recipe's); micro-batch = batch / gpus"
    )
    g.add_argument("--micro-batch", type=int, help="per-GPU micro-batch (overrides --batch)")
    g.add_argument(
        "--zero", type=int, choices=(0, 1, 2, 3), help="ZeRO stage (default: the recipe's)"
    )
    g.add_argument("--precision", choices=sorted(costs.PRECISION_BYTES), help="training precision")
    g.add_argument("--optimizer", choices=sorted(costs.OPTIMIZER_STATES), help="default: the recipe's")
    g.add_argument(
        "--grad-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="activation checkpointing per block (default: the recipe's model.grad_checkpointing)",
    )
    g.add_argument("--patch-dropout", type=float, help="CLIP patch dropout (default: the recipe's)")
    g.add_argument("--mask-ratio", type=float, default=0.4, help="MIM mask ratio (default 0.4)")
    g.add_argument(
        "--teacher", help="MIM teacher rung (default: the rung's teacher in the ladder file)"
    )
    g.add_argument("--samples", type=float, help="samples seen (default: the recipe's)")
    g.add_argument(
        "--wall-days", type=float, help="a known wall time (days): report the MFU it implies"
    )
    g.add_argument(
        "--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation (default 0.4)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.rung:
            if args.gpus is not None and args.gpus < 1:
                raise ValueError("--gpus must be >= 1")
            report = cost_report(args)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                print_report(report)
            return 0
        rows = [row for rung in list_rungs(proxy=args.proxy) for row in tower_rows(rung)]
    except (UnknownRungError, SpecError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
