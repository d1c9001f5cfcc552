"""What the ladder's orchestration costs: the dry run, and a local job's way to its first step.

    python benchmarks/bench_orchestration.py                     # prints the figures
    python benchmarks/bench_orchestration.py --json bench_orchestration.json --repeat 5

Figures:

* ``dry_run``: wall and CPU time of ``python -m scaling.ladder --from E14 --to 18B --no-proxy
  --dry-run --json`` in a fresh process (best and median of ``--repeat``; the budget is 1.5 s).
* ``local_noop``: submit -> result of a job that does nothing, on submitit's LocalExecutor (the
  executor's own cost: controller, pickles, a Python start).
* ``local_stage``: submit -> job start -> first training step logged -> end, for a real tiny
  proxy stage (``clip@E14``, 32 samples) run through ``StageJob`` on the local executor. The
  first-step time includes importing torch/timm/open_clip and building the model.

The machine's load average is printed with the figures: on a shared machine, wall times
stretch with it while CPU times do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def noop() -> str:
    return "ok"


def bench_dry_run(repeat: int) -> dict:
    cmd = [sys.executable, "-m", "scaling.ladder", "--from", "E14", "--to", "18B", "--no-proxy", "--dry-run", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    walls, cpus = [], []
    with tempfile.TemporaryDirectory(dir=REPO_ROOT / ".cache" if (REPO_ROOT / ".cache").is_dir() else None) as cwd:
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if proc.returncode != 0:
                raise SystemExit(f"dry run failed: {proc.stderr.strip()}")
    stages = [row["stage"] for row in json.loads(proc.stdout)]
    return {"stages": stages, "wall_s_best": min(walls), "wall_s_median": statistics.median(walls),
            "cpu_s_best": min(cpus), "cpu_s_median": statistics.median(cpus), "budget_s": 1.5}


def bench_local_noop(folder: Path, repeat: int) -> dict:
    from scaling.launch import make_executor

    times = []
    for _ in range(repeat):
        executor = make_executor("local", folder, {"timeout_min": 5}, name="noop")
        start = time.perf_counter()
        assert executor.submit(noop).result() == "ok"
        times.append(time.perf_counter() - start)
    return {"submit_to_result_s_best": min(times), "submit_to_result_s_median": statistics.median(times)}


def bench_local_stage(folder: Path, samples: int) -> dict:
    from scaling.config import load_stage_config
    from scaling.launch import StageJob, make_executor
    from scaling.stage_state import read_progress, read_state

    out_dir = folder / "stage"
    cfg = load_stage_config("clip", "E14", proxy=True, overrides=[
        f"train.samples={samples}", "train.batch_size=16", "train.log_every=1", "eval.every_samples=0",
        "eval.max_samples=32", f"out_dir={out_dir}"])
    executor = make_executor("local", folder / "jobs", cfg.resources, name="stage")
    submitted = time.time()
    job = executor.submit(StageJob(cfg))
    first_step = None
    while not job.done():
        if first_step is None and (read_progress(out_dir).get("metrics") or {}).get("train/samples_seen"):
            first_step = time.time()
        time.sleep(0.05)
    result = job.result()
    ended = time.time()
    state = read_state(out_dir)
    if first_step is None:  # the stage was faster than one poll after its first step
        first_step = float(read_progress(out_dir).get("updated", ended))
    return {"samples": result["samples_seen"], "submit_to_job_start_s": state["started"] - submitted,
            "submit_to_first_step_s": first_step - submitted, "submit_to_end_s": ended - submitted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the dry run and the no-op job")
    parser.add_argument("--samples", type=int, default=32, help="samples of the real tiny stage")
    parser.add_argument("--skip-stage", action="store_true", help="leave out the real stage (no torch)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    figures: dict = {"cpus": os.cpu_count(), "load_avg_1m_before": os.getloadavg()[0]}
    figures["dry_run"] = bench_dry_run(args.repeat)
    d = figures["dry_run"]
    print(f"dry run (real E14 -> 18B, {', '.join(d['stages'])}): wall best {d['wall_s_best']:.2f} s, "
          f"median {d['wall_s_median']:.2f} s; cpu best {d['cpu_s_best']:.2f} s (budget 1.5 s)")
    with tempfile.TemporaryDirectory(dir=REPO_ROOT / ".cache" if (REPO_ROOT / ".cache").is_dir() else None) as tmp:
        figures["local_noop"] = bench_local_noop(Path(tmp) / "noop", args.repeat)
        n = figures["local_noop"]
        print(f"local executor, no-op job: submit -> result best {n['submit_to_result_s_best']:.2f} s, "
              f"median {n['submit_to_result_s_median']:.2f} s")
        if not args.skip_stage:
            figures["local_stage"] = bench_local_stage(Path(tmp), args.samples)
            s = figures["local_stage"]
            print(f"local executor, tiny clip@E14 stage ({s['samples']} samples): job start after "
                  f"{s['submit_to_job_start_s']:.2f} s, first training step after {s['submit_to_first_step_s']:.1f} s, "
                  f"done after {s['submit_to_end_s']:.1f} s")
    figures["load_avg_1m_after"] = os.getloadavg()[0]
    print(f"load average (1 min) {figures['load_avg_1m_before']:.1f} -> {figures['load_avg_1m_after']:.1f} "
          f"on {figures['cpus']} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
