"""``python -m scaling.ladder``: dry run speed and imports, user errors (exit 2, nothing created)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.ladder.cli import main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "submitit", "deepspeed", "timm", "open_clip")


def _run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_dry_run_json_real_sizes_is_fast_and_imports_nothing_heavy(tmp_path):
    args = ["-m", "scaling.ladder", "--from", "E14", "--to", "18B", "--no-proxy", "--dry-run", "--json"]
    walls, cpus = [], []
    for _ in range(3):  # a shared machine: judge by the best of three
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = _run(args, tmp_path)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["stage"] for r in rows] == ["mim@18B", "clip@18B"] and rows[1]["depends_on"] == ["mim@18B"]
    # On an overloaded machine (other jobs running) wall time measures the queue for the CPU,
    # not this command: then its own CPU time must stay under the budget.
    overloaded = os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1)
    assert min(cpus if overloaded else walls) < 1.5, f"dry run: wall {walls} s, cpu {cpus} s"
    imported = _run(["-X", "importtime", *args], tmp_path).stderr
    modules = {line.split("|")[-1].strip().split(".")[0] for line in imported.splitlines() if "|" in line}
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert not any(tmp_path.iterdir())  # a dry run creates nothing


def test_dry_run_table(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--from", "E14", "--to", "18B", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "clip@E14 (bootstrap)" in out.out and "mim@18B" in out.out and "GPU-hours" in out.out
    assert "trains clip@E14 from scratch" in out.err


@pytest.mark.parametrize("argv, message", [
    (["--from", "E15", "--to", "18B"], "unknown rung 'E15'"),
    (["--from", "18B", "--to", "E14"], "must be below"),
    (["--from", "E14", "--to", "18B", "--no-proxy"], "missing teacher checkpoint"),
    (["--from", "E14", "--to", "18B", "optim.lrr=3"], "unknown config key 'optim.lrr'"),
    (["--from", "E14", "--to", "18B", "clip@18B.train.samples=lots"], "train.samples"),
    (["--from", "E14", "--to", "18B", "--ladder", "nope.yaml"], "nope.yaml"),
])
def test_user_errors_exit_2_and_create_nothing(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scaling.ladder: error:") and message in err[0], err
    assert not any(tmp_path.iterdir())  # no runs/, no mlflow.db


def test_no_slurm_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["--from", "E14", "--to", "18B", "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]


def test_status_of_a_plan_that_never_ran(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--from", "E14", "--to", "18B", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["state"]) for r in rows] == [("clip@E14", "new"), ("mim@18B", "new"), ("clip@18B", "new")]


def test_result_cells():
    from scaling.ladder.render import status_table, zero_shot

    assert zero_shot({"eval/synth_cls/top1": 0.125, "eval/synth_cls/top5": 0.5, "train/loss": 1}) == "synth_cls 12.5%"
    assert zero_shot({"eval/mim/loss": -0.5}) == "mim loss -0.500"
    assert zero_shot({}) == "-"
    table = status_table([{"stage": "clip@18B", "state": "running", "run_id": "r1", "job_id": "7",
                           "samples_seen": 500, "samples": 2000, "metrics": {}, "out_dir": "runs/x"}])
    assert "500/2k (25%)" in table and "running" in table
