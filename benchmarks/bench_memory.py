"""Memory of real-size training steps, measured, beside ``scaling.costs.memory_per_gpu``'s
prediction of each part: weights, gradients, optimizer state, the MIM teacher and the
activation peak. Target: predicted / measured in [0.8, 1.25] for every part.

    python benchmarks/bench_memory.py         # B16 CLIP + L14 MIM, micro-batch 2/4/8, ckpt on/off, fp32/bf16
    python benchmarks/bench_memory.py --cases clip:B16 --micro 2 --precision fp32   # a subset first
    python benchmarks/bench_memory.py --json out/memory.json

Each case is the toolkit's own step (``benchmarks/steps.py``: ``TrainingLoop.micro_loss`` and the
plain torch engine's backward, the recipe's optimiser, 50 % patch dropout for CLIP, a B16 CLIP
vision tower as L14's MIM teacher) at real size on 224 px inputs. Measured:

* weights / teacher: bytes of the module's parameters and buffers;
* gradients: bytes of ``p.grad`` after a backward;
* optimizer: bytes of the optimiser's state tensors after a step;
* activations: the peak of allocated bytes during one forward + backward above what was
  allocated before it (weights, gradients and optimiser state already in place), from the
  profiler's memory events on the CPU (``torch.cuda.max_memory_allocated`` on CUDA).

bf16 here is the plain engine's autocast (fp32 weights, bf16 matmuls), what a stage without
DeepSpeed runs; DeepSpeed's bf16 weights and fp32 master copy are counted, not measured.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
from typing import Any

from common import machine

from scaling.kinds import kind_names

TARGET = (0.8, 1.25)
PARTS = ("weights", "grads", "optimizer", "teacher", "activations")
CASES = ("clip:B16", "mim:L14")
MIM_TEACHER = "B16"


def case_config(kind: str, rung: str, micro: int, ckpt: bool, precision: str):
    from steps import stage_config

    extra = [f"train.precision={precision}", f"model.grad_checkpointing={str(ckpt).lower()}",
             "model.drop_path=0.0", "distributed.zero_stage=0"]
    if kind == "mim":
        extra.append(f"stage.teacher_rung={MIM_TEACHER}")
    return stage_config(kind, rung, micro, extra, proxy=False)


def _bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _cpu_peak(fn) -> int:
    """Peak of the running sum of allocations and frees during ``fn()`` (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _cuda_peak(fn, device) -> int:
    import torch

    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def measure(cfg, device: str = "cpu") -> dict[str, float]:
    """The measured parts of one case (see the module docstring)."""
    import torch
    from steps import toolkit_step

    setup = toolkit_step(cfg, torch.device(device))
    stage = setup.extras["stage"]
    model = setup.model
    batches = itertools.repeat(setup.batch)
    out = {"weights": float(_bytes(model.parameters()) + _bytes(model.buffers()))}
    if setup.teacher is not None:
        out["teacher"] = float(_bytes(setup.teacher.parameters()) + _bytes(setup.teacher.buffers()))
    stage.train_step(batches)  # creates the optimiser state
    out["optimizer"] = float(_bytes(t for s in stage.engine.optimizer.state.values()
                                    for t in s.values() if torch.is_tensor(t)))

    def forward_backward() -> None:
        with stage.engine.autocast():
            loss = stage.micro_loss(setup.batch)
        stage.engine.backward(loss, 1)

    forward_backward()  # gradients in place, as during accumulation or before a step
    out["grads"] = float(_bytes(p.grad for p in model.parameters() if p.grad is not None))
    gc.collect()
    if device.startswith("cuda"):
        out["activations"] = float(_cuda_peak(forward_backward, torch.device(device)))
    else:
        out["activations"] = float(_cpu_peak(forward_backward))
    return out


def predict(cfg) -> dict[str, float]:
    from scaling import costs
    from scaling.models import get_rung

    rung = get_rung(cfg.stage.rung, proxy=False)
    teacher = get_rung(cfg.stage.teacher_rung, proxy=False) if cfg.stage.kind == "mim" else None
    return costs.memory_per_gpu(
        rung, cfg.stage.kind, 1, int(cfg.train.batch_size), 0, precision=str(cfg.train.precision),
        grad_checkpointing=bool(cfg.model.grad_checkpointing), optimizer=str(cfg.optim.name),
        patch_dropout=float(cfg.model.patch_dropout) if cfg.stage.kind == "clip" else 0.0,
        teacher=teacher, deepspeed=False)


def run_cases(cases, micros, ckpts, precisions, device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    for case, precision, ckpt, micro in itertools.product(cases, precisions, ckpts, micros):
        kind, rung = case.split(":")
        cfg = case_config(kind, rung, micro, ckpt, precision)
        t0 = time.perf_counter()
        measured = measure(cfg, device)
        seconds = time.perf_counter() - t0
        predicted = predict(cfg)
        row = {"case": case, "precision": precision, "grad_checkpointing": ckpt, "micro_batch": micro,
               "seconds": seconds, "parts": {}}
        for part in PARTS:
            if part in measured:
                p, m = predicted.get(part, 0.0), measured[part]
                row["parts"][part] = {"predicted": p, "measured": m, "ratio": p / m if m else None}
        rows.append(row)
        print_row(row)
        sys.stdout.flush()
    return rows


def print_row(row: dict[str, Any]) -> None:
    head = (f"{row['case']:<9} {row['precision']:<5} ckpt {'on ' if row['grad_checkpointing'] else 'off'} "
            f"mb {row['micro_batch']:<2}")
    cells = []
    for part, r in row["parts"].items():
        flag = "" if r["ratio"] is not None and TARGET[0] <= r["ratio"] <= TARGET[1] else " !"
        cells.append(f"{part} {r['predicted'] / 2**20:.0f}/{r['measured'] / 2**20:.0f} MiB "
                     f"= {r['ratio']:.2f}{flag}")
    print(f"{head}  " + "; ".join(cells) + f"  ({row['seconds']:.0f} s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--cases", nargs="+", default=list(CASES), metavar="KIND:RUNG",
                        help=f"stage kind and rung, real size (default: {' '.join(CASES)})")
    parser.add_argument("--micro", nargs="+", type=int, default=[2, 4, 8], help="micro-batches (2 4 8)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--ckpt", nargs="+", default=["off", "on"], choices=("off", "on"),
                        help="gradient checkpointing (off on)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--json", type=argparse.FileType("w"), metavar="OUT", help="also write the rows here")
    return parser


def main(argv: list[str] | None = None, device: str = "cpu") -> int:
    args = build_parser().parse_args(argv)
    for case in args.cases:
        kind, _, rung = case.partition(":")
        if kind not in kind_names() or not rung:
            print(f"error: --cases takes KIND:RUNG with KIND clip or mim; got {case!r}", file=sys.stderr)
            return 2
    import torch

    torch.set_num_threads(args.threads)
    print(f"memory per part, predicted/measured = ratio (target {TARGET[0]}-{TARGET[1]}), device {device}")
    rows = run_cases(args.cases, args.micro, [c == "on" for c in args.ckpt], args.precision, device)
    ratios = [r["ratio"] for row in rows for r in row["parts"].values() if r["ratio"] is not None]
    inside = sum(TARGET[0] <= x <= TARGET[1] for x in ratios)
    print(f"{inside}/{len(ratios)} parts within the target; ratio range {min(ratios):.2f}-{max(ratios):.2f}")
    if args.json:
        import json

        json.dump({"benchmark": "memory", "device": device, "target": TARGET, "machine": machine(),
                   "rows": rows}, args.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
