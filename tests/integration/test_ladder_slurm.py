"""The ladder and its stage jobs on a real single-node SLURM cluster, with the real training stages.

Stage sizes are tiny (a few dozen samples) so that each job ends in a minute or two on 2 cores.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TINY = ["train.batch_size=16", "train.log_every=1", "eval.every_samples=0", "eval.max_samples=32",
        "resources.timeout_min=10"]


def _wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_proxy_ladder_runs_on_slurm_with_afterok(slurm_cluster, mlflow_server, submitit_folder, tmp_path,
                                                 monkeypatch, capsys):
    from scaling import tracking
    from scaling.ladder.cli import main

    monkeypatch.chdir(tmp_path)
    experiment = "ladder-slurm-e2e"
    argv = ["--from", "E14", "--to", "18B", "--proxy", "--executor", "slurm", "--experiment", experiment,
            "--tracking-uri", mlflow_server.uri, "--jobs-dir", str(submitit_folder),
            "--report-dir", str(tmp_path / "rep"),
            "train.samples=32", *TINY]
    assert main(argv) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    # a server serves its own UI: its address, then the runs table to open in it
    assert "MLflow: " + mlflow_server.uri in out and "then open " + mlflow_server.uri + "/#/experiments/" in out
    assert "synth_cls" in out

    # every stage after the first waited on its upstream through an afterok dependency
    scripts = {p.read_text() for p in submitit_folder.glob("*_submission.sh")}
    deps = [re.search(r"#SBATCH --dependency=(\S+)", s) for s in scripts]
    assert sorted(bool(d) for d in deps) == [False, True, True]
    assert all(d.group(1).startswith("afterok:") for d in deps if d)

    runs = tracking.find_runs(mlflow_server.uri, experiment)
    by_name = {r.info.run_name: r for r in runs}
    parent = next(r for n, r in by_name.items() if n.startswith("ladder"))
    for name in ("clip@E14", "mim@18B", "clip@18B"):
        run = by_name[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["stage.name"] == name and run.data.tags["fingerprint"]
        assert ("eval/synth_cls/top1" if name.startswith("clip") else "eval/mim/loss") in run.data.metrics
    assert by_name["mim@18B"].data.tags["teacher_run_id"] == by_name["clip@E14"].info.run_id
    assert by_name["clip@18B"].data.tags["init_run_id"] == by_name["mim@18B"].info.run_id

    # the same command again submits nothing
    assert main(argv) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert len(list(submitit_folder.glob("*_submission.sh"))) == 3


def _stage_job(tmp_path: Path, uri: str, experiment: str, samples: int, extra: list[str], stage_fn=None):
    """A lone bootstrap CLIP stage (no inputs) with its MLflow run, ready to submit."""
    from scaling import tracking
    from scaling.config import load_stage_config
    from scaling.launch import StageJob

    cfg = load_stage_config("clip", "E14", proxy=True, overrides=[
        f"train.samples={samples}", f"out_dir={tmp_path / 'stage'}", *TINY, *extra])
    cfg.tracking.uri = uri
    cfg.tracking.run_id = tracking.start_run(uri, experiment, "clip@E14", tags=tracking.standard_tags(stage="clip"))
    return cfg, StageJob(cfg, stage_fn=stage_fn)


def _check_resumed_once(uri: str, run_id: str, samples: int, batch: int = 16) -> None:
    from scaling import tracking

    assert tracking.run_status(uri, run_id) == "FINISHED"
    steps = [m.step for m in tracking.get_metric_history(uri, run_id, "train/loss")]
    assert steps == list(range(1, samples // batch + 1)), steps  # every step exactly once


def _progress(out_dir: Path) -> float:
    from scaling.stage_state import read_progress

    return (read_progress(out_dir).get("metrics") or {}).get("train/samples_seen", 0)


@pytest.mark.parametrize("timeout", [False, True], ids=["preempted", "timeout"])
def test_interrupted_stage_requeues_and_finishes_in_the_same_run(slurm_cluster, mlflow_server, submitit_folder,
                                                                tmp_path, timeout):
    from scaling.launch import make_executor
    from scaling.stage_state import read_state
    from tests.services.jobs import PacedStage

    samples = 480
    # steps held >= 0.5 s: the signal must find the stage still training, however fast it is
    cfg, job_fn = _stage_job(tmp_path, mlflow_server.uri, f"ladder-requeue-{timeout}", samples, [],
                             stage_fn=PacedStage(0.5))
    executor = make_executor("slurm", submitit_folder, {**cfg.resources, "timeout_min": 10}, name="requeue")
    job = executor.submit(job_fn)
    out_dir = Path(cfg.out_dir)
    _wait_for(lambda: _progress(out_dir) >= 64, 300, "the stage to train a few steps")
    job._interrupt(timeout=timeout)  # preemption: TERM + USR2; timeout: USR2 only
    _wait_for(lambda: read_state(out_dir).get("state") == "preempted", 120, "a checkpoint at a step boundary")
    result = job.result()  # waits through the requeue to the end
    assert result["status"] == "finished" and result["samples_seen"] == samples
    state = read_state(out_dir)
    assert state["state"] == "finished" and state["resume_from"]  # the requeued job knew its checkpoint
    _check_resumed_once(mlflow_server.uri, cfg.tracking.run_id, samples)


def test_stage_past_its_time_limit_requeues_and_finishes(slurm_cluster, mlflow_server, submitit_folder, tmp_path):
    """A real SLURM time limit: USR2 ``signal_delay_s`` before it, checkpoint, requeue, resume."""
    from scaling.launch import StageJob, make_executor
    from scaling.stage_state import read_state
    from tests.services.jobs import PacedStage

    samples = 1600  # 100 steps held >= 1.5 s each: still training when the USR2 comes 1-2 min in
    cfg, _ = _stage_job(tmp_path, mlflow_server.uri, "ladder-time-limit", samples, [])
    # SLURM limits are whole minutes and USR2 may come up to a minute early: 3 min leaves a
    # loaded 2-core machine time to start torch and train between signals.
    executor = make_executor("slurm", submitit_folder, {**cfg.resources, "timeout_min": 3, "signal_delay_s": 60},
                             name="time-limit")
    job = executor.submit(StageJob(cfg, stage_fn=PacedStage(1.5)))
    result = job.result()
    assert result["status"] == "finished" and result["samples_seen"] == samples
    assert read_state(cfg.out_dir)["resume_from"]  # it did stop and come back at least once
    _check_resumed_once(mlflow_server.uri, cfg.tracking.run_id, samples)


def test_failed_upstream_cancels_dependants_on_slurm(slurm_cluster, submitit_folder, tmp_path, monkeypatch, capsys):
    from scaling import tracking
    from scaling.ladder.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # a teacher checkpoint that exists but holds no weights: mim@18B fails when it loads it
    bogus = tmp_path / "not_a_checkpoint"
    bogus.mkdir()
    argv = ["--from", "E14", "--to", "18B", "--proxy", "--executor", "slurm", "--tracking-uri", uri,
            "--jobs-dir", str(submitit_folder), f"ladder.teacher_checkpoint={bogus}", "train.samples=32", *TINY]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "[mim@18B] FAILED" in out and "[clip@18B] cancelled" in out, out
    status = {r.info.run_name: r.info.status for r in tracking.find_runs(uri, "ladder-eva")}
    assert status["mim@18B"] == "FAILED" and status["clip@18B"] == "KILLED"
