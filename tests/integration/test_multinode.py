"""Stages across the two nodes of a real SLURM cluster (``sn1``, ``sn2``: one network namespace,
address and hostname each), DeepSpeed ZeRO-3 over gloo, logged to an ``mlflow server`` with a
PostgreSQL store that both nodes reach on the cluster's bridge.

Sizes are tiny (a few steps of the smallest proxies) so that each job ends in about a minute on
2 cores.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

BATCH = 16
TINY = [f"train.batch_size={BATCH}", "train.log_every=1", "eval.every_samples=0", "eval.max_samples=16",
        "data.synth_samples=256", "data.shuffle_buffer=32", "resources.timeout_min=10", "resources.cpus_per_task=1",
        "model.drop_path=0.0", "model.patch_dropout=0.0"]  # fmt: skip
TWO_NODES = ["resources.nodes=2", "resources.tasks_per_node=1", "distributed.deepspeed=true",
             "distributed.zero_stage=3", "distributed.backend=gloo"]  # fmt: skip
# One CLIP stage on the ladder: clip@18B, its text tower from a given E14 CLIP (the teacher).
LADDER = {
    "name": "two-node",
    "experiment": "ladder-two-node",
    "stages": {"clip": {"init_text": "clip@text_init"}},  # the text tower from the E14 checkpoint
    "rungs": {"E14": {"teacher": None}, "18B": {"teacher": "E14"}},
    "teacher_checkpoint": None,
    "config": {"all": {}, "mim": {}, "clip": {}},
    "proxy": {"all": {}},
}


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def cpu_deepspeed(monkeypatch):
    # Jobs inherit the submitting environment: DeepSpeed must not look for CUDA on these nodes.
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny E14 proxy CLIP (one process, no scheduler): the ladder's given teacher checkpoint."""
    out = tmp_path_factory.mktemp("teacher")
    done = subprocess.run([sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "E14", "--quiet",
                           "--out", str(out), "train.samples=32", *TINY],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def ladder_argv(tmp_path: Path, uri: str, teacher: Path, samples: int, *extra: str) -> list[str]:
    ladder = tmp_path / "two-node.yaml"
    ladder.write_text(yaml.safe_dump(LADDER, sort_keys=False))  # rung order matters
    return ["--ladder", str(ladder), "--from", "E14", "--to", "18B", "--proxy", "--executor", "slurm",
            "--tracking-uri", uri, "--jobs-dir", str(tmp_path / "jobs"), "--runs-dir", str(tmp_path / "runs"),
            "--report-dir", str(tmp_path / "rep"), f"ladder.teacher_checkpoint={teacher}",
            f"train.samples={samples}", *TINY, *TWO_NODES, *extra]  # fmt: skip


def losses(uri: str, run_id: str) -> list[float]:
    from scaling import tracking

    history = sorted(tracking.get_metric_history(uri, run_id, "train/loss"), key=lambda m: m.step)
    return [m.value for m in history]


def test_ladder_stage_on_two_nodes_matches_one_node_two_processes(two_node_cluster, node_mlflow_server, teacher,
                                                                 tmp_path, monkeypatch, capsys, cpu_deepspeed):
    from scaling import tracking
    from scaling.config import load_yaml
    from scaling.ladder.cli import main
    from scaling.launch import StageJob, make_executor
    from scaling.stage_state import read_state

    monkeypatch.chdir(tmp_path)
    uri = node_mlflow_server.uri
    before = node_mlflow_server.requests_from()
    # system metrics off: they are the one stream every node sends (the preemption test checks it)
    code, out = main(ladder_argv(tmp_path, uri, teacher, 96, "tracking.system_metrics_s=0")), capsys.readouterr()
    assert code == 0, out.out + out.err

    runs = {r.info.run_name: r for r in tracking.find_runs(uri, "ladder-two-node")}
    stage = runs["clip@18B"]
    assert stage.info.status == "FINISHED"
    # the job really spanned both nodes, and the ranks met on the first node's address
    scripts = [p.read_text() for p in (tmp_path / "jobs").glob("*_submission.sh")]
    assert len(scripts) == 1 and "#SBATCH --nodes=2" in scripts[0], scripts
    out_dir = next((tmp_path / "runs").rglob("clip@18B-*"))
    state = read_state(out_dir)
    assert state["nodes"] == "sn[1-2]" and state["world_size"] == 2
    assert state["master"].split(":")[0] == "sn1"
    two_nodes = losses(uri, stage.info.run_id)
    assert len(two_nodes) == 96 // BATCH

    # only global rank 0 (on sn1) talked to the tracking server: counted on the server's side
    after = node_mlflow_server.requests_from()
    node1, node2 = (n.addr for n in two_node_cluster.network.nodes)
    assert after.get(node1, 0) > before.get(node1, 0), after
    assert after.get(node2, 0) == before.get(node2, 0), after

    # the same stage config on one node with two processes (local executor): same ranks, same samples
    cfg = load_yaml(out_dir / "config.yaml")
    cfg.out_dir = str(tmp_path / "one-node")
    cfg.resources.nodes, cfg.resources.tasks_per_node = 1, 2
    cfg.tracking.run_id = tracking.start_run(uri, "ladder-two-node", "clip@18B one node")
    job = make_executor("local", tmp_path / "local-jobs", cfg.resources, name="one-node").submit(StageJob(cfg))
    assert job.results()[0]["status"] == "finished"
    one_node = losses(uri, cfg.tracking.run_id)
    # as for 2 ranks under ZeRO against DDP (test_train_distributed.py): float rounding only
    assert two_nodes == pytest.approx(one_node, abs=2e-3), (two_nodes, one_node)


def _stage_job(tmp_path: Path, uri: str, samples: int, stage_fn, *extra: str):
    """A lone 18B proxy CLIP stage on both nodes (no inputs) with its MLflow run, ready to submit."""
    from scaling import tracking
    from scaling.config import load_stage_config
    from scaling.launch import StageJob

    cfg = load_stage_config("clip", "18B", proxy=True, overrides=[
        f"train.samples={samples}", f"out_dir={tmp_path / 'stage'}", *TINY, *TWO_NODES, *extra])
    cfg.tracking.uri = uri
    cfg.tracking.run_id = tracking.start_run(uri, "two-node-faults", "clip@18B",
                                             tags=tracking.standard_tags(stage="clip"))
    return cfg, StageJob(cfg, stage_fn=stage_fn)


def _samples_seen(out_dir: Path) -> float:
    from scaling.stage_state import read_progress

    return (read_progress(out_dir).get("metrics") or {}).get("train/samples_seen", 0)


def test_preempted_two_node_stage_resumes_both_nodes_from_one_checkpoint(two_node_cluster, node_mlflow_server,
                                                                          submitit_folder, tmp_path, cpu_deepspeed):
    from scaling import tracking
    from scaling.launch import make_executor
    from scaling.stage_state import read_state
    from tests.services.jobs import PacedStage

    samples = 160
    cfg, stage = _stage_job(tmp_path, node_mlflow_server.uri, samples, PacedStage(0.5), "tracking.system_metrics_s=1")
    job = make_executor("slurm", submitit_folder, cfg.resources, name="two-node-preempt").submit(stage)
    out_dir = Path(cfg.out_dir)
    wait_for(lambda: _samples_seen(out_dir) >= 3 * BATCH, 400, "the stage to train a few steps")
    job._interrupt()  # preemption: TERM + USR2 on both nodes' tasks
    wait_for(lambda: read_state(out_dir).get("state") == "preempted", 180, "a checkpoint at a step boundary")
    results = job.results()  # through the requeue, to the end; one result per task
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert all(r["samples_seen"] == samples for r in results)
    state = read_state(out_dir)
    assert state["state"] == "finished" and state["resume_from"]
    # the requeued attempt: both ranks, one on each node, started from the same checkpoint
    starts = {}
    for task in (0, 1):
        log = (submitit_folder / f"{job.job_id}_{task}_log.err").read_text()
        found = re.findall(r"rank (\d) of 2 on (\S+): clip@18B starts from (\S+)", log)
        assert found, log[-2000:]
        starts[found[-1][1]] = found[-1][2]
    assert set(starts) == {"sn1", "sn2"} and len(set(starts.values())) == 1, starts
    assert next(iter(starts.values())) == state["resume_from"]
    # the same MLflow run continued; every step logged exactly once
    assert tracking.run_status(node_mlflow_server.uri, cfg.tracking.run_id) == "FINISHED"
    steps = [m.step for m in tracking.get_metric_history(node_mlflow_server.uri, cfg.tracking.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, samples // BATCH + 1)), steps
    # each node's local rank 0 sent its own system metrics, keyed by its hostname
    logged = tracking.get_run(node_mlflow_server.uri, cfg.tracking.run_id).data.metrics
    for node in ("sn1", "sn2"):
        assert any(key.startswith(f"system/{node}/") for key in logged), sorted(logged)


def test_lost_node_ends_the_stage_and_status_names_it(two_node_cluster, node_mlflow_server, teacher, tmp_path,
                                                      cpu_deepspeed):
    from scaling.stage_state import read_state
    from scaling.train.checkpoint import latest_checkpoint, read_manifest

    # the ladder in its own process (as a user runs it), checkpointing every step
    argv = ladder_argv(tmp_path, node_mlflow_server.uri, teacher, 480, "train.ckpt_every=1")
    ladder = subprocess.Popen([sys.executable, "-m", "scaling.ladder", *argv], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    job_id = None
    try:
        out_dir = wait_for(lambda: next((tmp_path / "runs").rglob("clip@18B-*"), None), 120, "the stage folder")
        wait_for(lambda: _samples_seen(out_dir) >= 3 * BATCH, 400, "the stage to train a few steps")
        job_id = read_state(out_dir)["job_id"]
        assert two_node_cluster.kill_node("sn2")  # slurmd, its job step and the rank on it
        # rank 0 on sn1 fails at its next collective and says so
        wait_for(lambda: read_state(out_dir).get("state") == "failed", 180, "rank 0 to record the failure")
        # the job ends: failed, or requeued by SLURM (JobRequeue=1) and pending while its node is gone
        wait_for(lambda: _sacct_state(job_id), 180, f"job {job_id} to leave RUNNING")
        wait_for(lambda: _lost(two_node_cluster.node_states().get("sn2", "")), 120, "SLURM to mark sn2 down")
        # the ladder's status names the stage, the job and the node
        status = subprocess.run([sys.executable, "-m", "scaling.ladder", "status", *argv], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith("clip@18B"))
        assert "failed" in row and "node sn2 lost" in row and f" {job_id} " in row, status.stdout
        assert f"clip@18B: job {job_id} on sn[1-2]: " in status.stdout, status.stdout
        # With JobRequeue=1 SLURM may requeue the job after sacct showed NODE_FAIL; pending, it would
        # resume once sn2 is back and the ladder rightly keeps following it. End it either way.
        subprocess.run(["scancel", job_id], capture_output=True)  # a job already over: scancel says so, harmless
        output, _ = ladder.communicate(timeout=180)
    finally:
        if ladder.poll() is None:
            ladder.kill()
            ladder.wait()
        if job_id:
            subprocess.run(["scancel", job_id], capture_output=True)
    assert ladder.returncode == 1 and "[clip@18B] FAILED" in output, output
    # no half-written checkpoint: a save cut short stays a ``.tmp-*`` folder; every ``step_*`` is
    # complete, and a resume would take the newest of them
    folders = [d for d in (out_dir / "checkpoints").iterdir() if d.name.startswith("step_")]
    assert folders and all(read_manifest(d) is not None for d in folders), folders
    assert not (out_dir / "final").exists()
    assert latest_checkpoint(out_dir) == max(folders, key=lambda d: int(d.name.split("_")[1]))


def _lost(node_state: str) -> bool:
    return node_state.endswith("*") or node_state.startswith(("down", "fail"))


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    state = (out.stdout.strip().splitlines() or [""])[-1]
    return "" if state.startswith(("RUNNING", "COMPLETING")) or not state else state
