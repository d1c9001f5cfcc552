"""Executors, distributed env, stage state files and StageJob (in process, stand-in stage)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from scaling.launch import LaunchError, make_executor, resolve_executor, run_distributed_env
from scaling.launch.executors import slurm_parameters
from scaling.stage_state import (
    ProgressLogger,
    read_progress,
    read_state,
    write_state,
)
from scaling.train.result import StageResult


def _empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_auto_is_local_without_sbatch(tmp_path, monkeypatch):
    _empty_path(tmp_path, monkeypatch)
    assert resolve_executor("auto") == "local"
    assert resolve_executor("debug") == "debug"


def test_slurm_without_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    _empty_path(tmp_path, monkeypatch)
    with pytest.raises(LaunchError, match="sbatch"):
        resolve_executor("slurm")
    with pytest.raises(LaunchError, match="unknown executor"):
        resolve_executor("kubernetes")


def test_auto_is_slurm_with_sbatch_and_a_cluster_config(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert resolve_executor("auto") == "slurm"
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    assert resolve_executor("auto") == "local"


def test_slurm_parameters_one_task_per_gpu():
    res = {"nodes": 45, "gpus_per_node": 8, "tasks_per_node": 1, "cpus_per_task": 10, "mem_gb": 0,
           "timeout_min": 240, "partition": "gpu", "account": "proj", "qos": None, "constraint": "a100",
           "signal_delay_s": 120}
    params = slurm_parameters(res, "ladder:clip@18B")
    assert params["tasks_per_node"] == 8 and params["gpus_per_node"] == 8 and params["nodes"] == 45
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "proj"
    assert params["slurm_constraint"] == "a100" and "slurm_qos" not in params and "mem_gb" not in params
    assert params["slurm_signal_delay_s"] == 120 and params["timeout_min"] == 240
    cpu = slurm_parameters({"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 2}, "x", array_parallelism=3)
    assert cpu["tasks_per_node"] == 2 and "gpus_per_node" not in cpu and cpu["slurm_array_parallelism"] == 3


def test_make_executor_local_and_debug(tmp_path):
    import submitit

    local = make_executor("local", tmp_path / "jobs", {"timeout_min": 5, "tasks_per_node": 2}, name="t")
    assert isinstance(local, submitit.LocalExecutor)
    assert local.parameters["tasks_per_node"] == 2 and local.parameters["timeout_min"] == 5
    assert isinstance(make_executor("debug", tmp_path / "jobs", {}, name="t"), submitit.DebugExecutor)
    with pytest.raises(LaunchError, match="one node"):
        make_executor("local", tmp_path / "jobs", {"nodes": 2}, name="t")


@pytest.mark.parametrize("nodelist, host", [("gpu[011-012]", "gpu011"), ("gpu[003-005,9],cpu1", "gpu003"),
                                             ("node7,node8", "node7"), ("a[1,4]", "a1")])
def test_run_distributed_env_from_slurm_tasks(monkeypatch, nodelist, host):
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NODEID": "1", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": nodelist}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so restored after the test
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    values = run_distributed_env()
    ranks = (values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    assert ranks == ("9", "16", "1", "8")
    assert values["MASTER_ADDR"] == host and os.environ["MASTER_ADDR"] == host
    assert 20000 <= int(values["MASTER_PORT"]) <= 60000 and values["JOB_ID"] == "4242"


def test_state_and_progress_files(tmp_path):
    write_state(tmp_path, "running", run_id="abc", job_id="7")
    write_state(tmp_path, "finished", metrics={"eval/x/top1": 0.5})
    state = read_state(tmp_path)
    assert state["state"] == "finished" and state["run_id"] == "abc" and state["metrics"]["eval/x/top1"] == 0.5
    with pytest.raises(ValueError):
        write_state(tmp_path, "exploded")
    progress = ProgressLogger(tmp_path, every_s=0)
    progress.log_metrics({"train/samples_seen": 64}, step=1)
    progress.log_metrics({"train/samples_seen": 128}, step=2)
    progress.close()
    assert read_progress(tmp_path)["metrics"]["train/samples_seen"] == 128
    # what StageJob.checkpoint() requeues with
    from scaling.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for step in (100, 20):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step_{step}" / "manifest.json").write_text('{"files": {}}')
    (tmp_path / "checkpoints" / "step_300").mkdir()  # incomplete: no manifest
    assert str(latest_checkpoint(tmp_path)).endswith("step_100")


def _cfg(tmp_path: Path) -> dict:
    return {"stage": {"name": "clip@B16", "kind": "clip"}, "out_dir": str(tmp_path / "stage"),
            "tracking": {"uri": None, "run_id": None}}


def stand_in(cfg, logger=None, stop_requested=None):
    out = Path(cfg.out_dir)
    for step in (1, 2, 3):
        logger.log_metrics({"train/samples_seen": 10 * step}, step)
        if step == 2 and cfg.stage.get("preempt_at_2"):
            os.kill(os.getpid(), signal.SIGTERM)  # the flag only; the stage decides when to stop
        if stop_requested():
            (out / "checkpoints" / f"step_{step}").mkdir(parents=True)
            (out / "checkpoints" / f"step_{step}" / "manifest.json").write_text(json.dumps({"step": step, "files": {}}))
            return StageResult("preempted", step, 10 * step, {}, str(out / "checkpoints" / f"step_{step}"), str(out))
    return StageResult("finished", 3, 30, {"eval/synth/top1": 0.25}, str(out / "final"), str(out))


def test_stage_job_runs_and_records_state(tmp_path):
    from scaling.launch import StageJob

    result = StageJob(_cfg(tmp_path), stage_fn=stand_in)()
    assert result["status"] == "finished" and result["metrics"] == {"eval/synth/top1": 0.25}
    state = read_state(tmp_path / "stage")
    assert state["state"] == "finished" and state["samples_seen"] == 30
    assert read_progress(tmp_path / "stage")["metrics"]["train/samples_seen"] == 30


def test_stage_job_stops_on_term_and_requeues_from_newest_checkpoint(tmp_path, monkeypatch):
    from scaling.launch import StageJob

    monkeypatch.setattr("scaling.launch.job._USR2_GRACE_S", 0.2)

    cfg = _cfg(tmp_path)
    cfg["stage"]["preempt_at_2"] = True
    before = signal.getsignal(signal.SIGTERM)
    job = StageJob(cfg, stage_fn=stand_in)
    result = job()
    assert result["status"] == "preempted" and result["samples_seen"] == 20
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    assert read_state(tmp_path / "stage")["state"] == "preempted"
    delayed = job.checkpoint()
    assert isinstance(delayed.function, StageJob) and delayed.function.resume_from.endswith("step_2")


def test_slurm_with_sbatch_but_no_cluster_is_a_clear_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", "exit 0"), ("sinfo", "echo 'sinfo: fatal: no config source' >&2; exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setattr("scaling.launch.executors._SLURM_CONF_DEFAULTS", ())
    with pytest.raises(LaunchError, match="no SLURM cluster answers.*no config source"):
        resolve_executor("slurm")
    assert resolve_executor("auto") == "local"
