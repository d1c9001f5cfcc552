"""Faults a cluster user meets, one row each: real processes, real signals, real MLflow stores.

Every row runs the proxy B16 CLIP stage (46 steps of 16, a checkpoint every 10 steps, metrics
every step) in a subprocess, hurts it, runs the same command again and checks what a user would:
each metric step recorded exactly once, the final weights those of the uninterrupted reference
run, the message and the exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaling.metrics import JsonlLogger
from scaling.paths import REPO_ROOT
from scaling.stage_state import STOPPED_EXIT, read_state
from scaling.train import checkpoint as ckpt
from tests.services.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration

STEPS = 46


def command(out: Path, synth: Path, *extra: str, metrics: Path | None = None, mlflow: str | None = None) -> list[str]:
    flags = ["--metrics", str(metrics)] if metrics else []
    flags += ["--mlflow"] if mlflow else []
    return [sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(out), "--quiet",
            *flags, f"data.cache_dir={synth}", "data.synth_samples=256", "data.shuffle_buffer=32",
            "train.batch_size=16", f"train.samples={16 * STEPS}", "train.ckpt_every=10", "train.log_every=1",
            "train.keep_checkpoints=0", "eval.max_samples=16", "optim.warmup_samples=32",
            *([f"tracking.uri={mlflow}", "tracking.experiment=faults"] if mlflow else []), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, path: Path) -> None:
    """Poll (tightly: a temporary checkpoint folder lives for a fraction of a second) until ``path`` exists."""
    while not path.exists():
        assert proc.poll() is None, f"the stage ended before {path.name} appeared: {proc.stderr.read()[-2000:]}"


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "final" / ckpt.MODEL_FILE, weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def jsonl_steps(path: Path, key: str = "train/loss") -> list[int]:
    return [int(r["step"]) for r in JsonlLogger(path).read() if key in r]


def mlflow_steps(uri: str, out: Path, key: str = "train/loss") -> list[int]:
    from scaling import tracking

    run_id = read_state(out)["run_id"]
    return sorted(m.step for m in tracking.get_metric_history(uri, run_id, key))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory) -> Path:
    """The uninterrupted run every row compares its final weights with."""
    out = tmp_path_factory.mktemp("reference") / "stage"
    done = run(command(out, synth))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


# -- row: kill -9 just after step_30 is written, rerun (MLflow on SQLite) ---------------------------
def test_kill_9_after_a_checkpoint_loses_and_repeats_no_metric(synth, reference, tmp_path):
    out, metrics, uri = tmp_path / "stage", tmp_path / "m.jsonl", f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start(command(out, synth, metrics=metrics, mlflow=uri))
    wait_for(proc, out / "checkpoints" / "step_30")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    again = run(command(out, synth, metrics=metrics, mlflow=uri))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr and "resent" in again.stderr
    every = list(range(1, STEPS + 1))
    assert mlflow_steps(uri, out) == every  # steps 1-30 were in the killed process's buffer
    assert jsonl_steps(metrics) == every
    assert jsonl_steps(out / "metric_spool.jsonl") == every
    assert_same_weights(reference, out)


# -- row: kill -9 while .tmp-step_20 is written, rerun (MLflow behind `mlflow server`) -------------
def test_kill_9_while_a_checkpoint_is_written(synth, reference, tmp_path):
    out, metrics = tmp_path / "stage", tmp_path / "m.jsonl"
    with MlflowServer(tmp_path / "server") as server:
        proc = start(command(out, synth, metrics=metrics, mlflow=server.uri))
        wait_for(proc, out / "checkpoints" / ".tmp-step_20")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert ckpt.latest_checkpoint(out).name == "step_10"  # the half checkpoint is not one
        again = run(command(out, synth, metrics=metrics, mlflow=server.uri))
        assert again.returncode == 0, again.stderr[-2000:]
        assert "resumed from" in again.stderr and "step_10" in again.stderr
        every = list(range(1, STEPS + 1))
        assert mlflow_steps(server.uri, out) == every
        evals = mlflow_steps(server.uri, out, "eval/synth_cls/top1")
        assert evals == sorted(set(evals)) and evals[-1] == STEPS
    assert jsonl_steps(metrics) == every  # steps 11-20 were written by both processes: once here
    assert_same_weights(reference, out)


# -- row: SIGTERM (and Ctrl-C) to a foreground `python -m scaling.train` ----------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_a_step_with_a_checkpoint_and_the_rerun_resumes(synth, reference, tmp_path, signum):
    out, metrics = tmp_path / "stage", tmp_path / "m.jsonl"
    proc = start(command(out, synth, metrics=metrics))
    wait_for(proc, out / "checkpoints" / "step_10")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == STOPPED_EXIT, stderr[-2000:]
    assert f"received {signal.Signals(signum).name}: stopping at the next step boundary" in stderr
    assert f"stopped by {signal.Signals(signum).name} at step" in stdout and "run the same command again" in stdout
    state = read_state(out)
    assert state["state"] == "preempted" and ckpt.is_complete(state["checkpoint"])
    stopped_at = ckpt.read_manifest(state["checkpoint"])["step"]
    assert jsonl_steps(metrics) == list(range(1, stopped_at + 1))
    again = run(command(out, synth, metrics=metrics))
    assert again.returncode == 0, again.stderr[-2000:]
    assert jsonl_steps(metrics) == list(range(1, STEPS + 1))
    assert_same_weights(reference, out)


# -- row: two writers of the same stage folder -------------------------------------------------------
def test_a_second_process_on_a_stage_folder_is_refused_and_a_dead_holder_is_taken_over(synth, reference, tmp_path):
    out = tmp_path / "stage"
    first = start(command(out, synth))
    wait_for(first, out / "checkpoints" / "step_10")
    first.send_signal(signal.SIGSTOP)  # held mid-stage, whatever the load, while the second one tries
    second = run(command(out, synth))
    assert second.returncode == 2
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: stage folder {out} is in use by pid {first.pid} on ") and "--wait" in line
    first.send_signal(signal.SIGKILL)  # the holder dies with its lock
    first.wait(timeout=60)
    third = run(command(out, synth))
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((out / ".lock").read_text())["pid"] != first.pid
    assert_same_weights(reference, out)


# -- row: a loss that becomes NaN ------------------------------------------------------------------
def test_a_nan_loss_stops_the_stage_as_failed_naming_the_step(synth, tmp_path):
    out = tmp_path / "stage"
    done = run(command(out, synth, "optim.lr=1e30", "optim.warmup_samples=0"))
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged at step ") and "train/loss=nan" in line
    assert "no checkpoint yet" in line and "Lower optim.lr" in line
    assert not (out / "final").exists() and ckpt.latest_checkpoint(out) is None


# -- ladder rows: E14 -> 18B proxy ladder, local executor, tiny stages but a longer first one ------
TINY = ["train.samples=32", "train.batch_size=16", "eval.every_samples=0", "eval.max_samples=32"]
LONG_FIRST = [f"clip@E14.train.samples={16 * STEPS}", "clip@E14.train.ckpt_every=10", "clip@E14.train.log_every=1"]


def ladder(cwd: Path, *args: str, wait: bool = True, command: str = "run"):
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "MLFLOW_TRACKING_URI")}
    cmd = [sys.executable, "-m", "scaling.ladder", command, "--from", "E14", "--to", "18B", "--executor", "local",
           *args]
    if wait:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stage_dir(cwd: Path, name: str) -> Path:
    found = sorted((cwd / "runs" / "ladder-eva").glob(f"{name}-*"))
    return found[0] if found else cwd / "runs" / "ladder-eva" / f"{name}-not-yet"


# rows: a second ladder at once; SIGTERM to a ladder's local stage
def test_a_second_ladder_is_refused_and_a_stopped_stage_is_not_a_failure(tmp_path):
    from scaling import tracking

    first = ladder(tmp_path, *TINY, *LONG_FIRST, wait=False)
    while not (stage_dir(tmp_path, "clip@E14") / "checkpoints" / "step_10").exists():
        assert first.poll() is None, first.communicate()[1][-2000:]
    second = ladder(tmp_path, *TINY, *LONG_FIRST)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"scaling.ladder: error: ladder folder {tmp_path / 'runs' / 'ladder-eva'} is in use by pid {first.pid} on ")

    stage = stage_dir(tmp_path, "clip@E14")
    os.kill(json.loads((stage / ".lock").read_text())["pid"], signal.SIGTERM)  # the stage's own process
    out, err = first.communicate(timeout=600)
    assert first.returncode == STOPPED_EXIT, out + err
    assert "[clip@E14] stopped (preempted)" in out and "run the same command again to resume" in out
    assert "[mim@18B] not started: upstream clip@E14 stopped" in out and "FAILED" not in out
    status = ladder(tmp_path, *TINY, *LONG_FIRST, command="status")
    assert status.returncode == 0
    assert [line.split()[1] for line in status.stdout.splitlines() if line.startswith("clip@E14")] == ["preempted"]

    again = ladder(tmp_path, *TINY, *LONG_FIRST)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("] finished:") == 3
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    history = tracking.get_metric_history(uri, read_state(stage)["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))


# row: the tracking server is down when the ladder starts (its URI holds a password: shown masked)
def test_a_down_tracking_server_does_not_stop_the_ladder(tmp_path):
    from scaling import tracking
    from tests.services.mlflow_server import free_port

    port = free_port()
    uri, shown = f"http://alice:S3cretPW@127.0.0.1:{port}", f"http://alice:***@127.0.0.1:{port}"
    args = [*TINY, "train.log_every=1", "--tracking-uri", uri]
    strict = ladder(tmp_path, *args, "--strict-tracking")
    assert strict.returncode == 2 and strict.stderr.strip().splitlines()[-1] == (
        f"scaling.ladder: error: MLflow at {shown} does not answer ([Errno 111] Connection refused); start it, "
        "or drop --strict-tracking to train untracked")
    assert not (tmp_path / "runs" / "ladder-eva" / "jobs").exists()  # nothing submitted

    status = ladder(tmp_path, *args, command="status")
    assert status.returncode == 0 and f"MLflow: cannot reach MLflow at {shown}" in status.stderr

    done = ladder(tmp_path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow at {shown} does not answer")
    assert "run the same command once the server is back" in warnings[0] and "Traceback" not in done.stderr
    assert done.stdout.count("] finished:") == 3
    assert "S3cretPW" not in done.stdout + done.stderr + strict.stderr + status.stderr
    spool = JsonlLogger(stage_dir(tmp_path, "clip@18B") / "metric_spool.jsonl").read()
    assert [r["step"] for r in spool if "train/loss" in r] == [1, 2]  # kept for the store

    # status names them; the same command with the server back records them from their spools
    stages = sorted((tmp_path / "runs" / "ladder-eva").glob("*@*"))
    status = ladder(tmp_path, *args, command="status")
    notes = [line for line in status.stdout.splitlines() if line.startswith("note: ") and "ran untracked" in line]
    assert len(stages) == 3 and len(notes) == 3, status.stdout
    with MlflowServer(tmp_path / "server", port=port) as server:
        again = ladder(tmp_path, *args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("ran untracked: recorded now in MLflow run") == 3, again.stdout
        for stage in stages:
            assert mlflow_steps(server.uri, stage) == [1, 2]
            assert tracking.run_status(server.uri, read_state(stage)["run_id"]) == "FINISHED"
        assert "ran untracked" not in ladder(tmp_path, *args, command="status").stdout
