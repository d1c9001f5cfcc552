"""Dispatch with the in-process ``debug`` executor, a stand-in stage and a SQLite MLflow store:
skip finished stages, rerun what changed and what depends on it, cancel after a failure,
resume an unfinished stage in the same MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scaling.ladder import plan_ladder
from scaling.ladder.dispatch import Dispatcher
from scaling.stage_state import read_state
from scaling.train.result import StageResult


def fake_stage(cfg, logger=None, stop_requested=None):
    """Three logged steps, a final manifest; ``train.seed=13`` fails; ``train.seed=7`` stops once."""
    out = Path(cfg.out_dir)
    final = out / "final"
    for key in ("teacher", "init_vision", "init_text"):
        path = cfg.inputs[key]
        if path and not (Path(path) / "final" / "manifest.json").is_file():
            raise FileNotFoundError(f"inputs.{key}: {path} has no final checkpoint")
    if cfg.train.seed == 13:
        raise RuntimeError("diverged (seed 13)")
    start = 0
    resumed = out / "checkpoints" / "step_2" / "manifest.json"
    if resumed.is_file():
        start = 2
    for step in range(start + 1, 4):
        logger.log_metrics({"train/loss": 1.0 / step, "train/samples_seen": 10 * step}, step)
        if step == 2 and cfg.train.seed == 7 and not resumed.is_file():
            resumed.parent.mkdir(parents=True)
            resumed.write_text("{}")
            return StageResult("preempted", 2, 20, {}, str(resumed.parent), str(out))
    metrics = {"eval/synth_cls/top1": 0.5}
    logger.log_metrics(metrics, 3)
    final.mkdir(parents=True, exist_ok=True)
    (final / "manifest.json").write_text(json.dumps({"step": 3}))
    return StageResult("finished", 3, 30, metrics, str(final), str(out))


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    # A fresh SQLite store costs MLflow's schema migrations (seconds): one per module.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def env(tmp_path, monkeypatch, store_uri, request):
    monkeypatch.chdir(tmp_path)
    return {"uri": store_uri, "runs": tmp_path / "runs", "jobs": tmp_path / "jobs",
            "experiment": f"ladder-{request.node.name[5:40]}"}


def _run(env, overrides=(), start="E14"):
    plan = plan_ladder(start, "18B", proxy=True, overrides=list(overrides), runs_dir=env["runs"],
                       tracking_uri=env["uri"], experiment=env["experiment"])
    outcome = Dispatcher(plan, "debug", tracking_uri=env["uri"], jobs_dir=env["jobs"], stage_fn=fake_stage,
                         poll_s=0.01).run()
    return plan, outcome


def _runs(env):
    from scaling import tracking

    return tracking.find_runs(env["uri"], env["experiment"])


def test_ladder_runs_tracks_lineage_and_skips_when_finished(env):
    plan, outcome = _run(env)
    assert outcome.ok and outcome.submitted == ["clip@E14", "mim@18B", "clip@18B"]
    runs = {r.info.run_name: r for r in _runs(env)}
    parent = runs[next(n for n in runs if n.startswith("ladder"))]
    assert parent.info.status == "FINISHED"
    ids = outcome.run_ids
    for name in ("clip@E14", "mim@18B", "clip@18B"):
        run = runs[name]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["fingerprint"] == plan.stage(name).fingerprint
        assert run.data.params["train.samples"] == str(plan.stage(name).cfg.train.samples)
    assert runs["mim@18B"].data.tags["teacher_run_id"] == ids["clip@E14"]
    assert runs["clip@18B"].data.tags["init_run_id"] == ids["mim@18B"]
    assert runs["clip@18B"].data.tags["teacher_run_id"] == ids["clip@E14"]
    assert runs["clip@18B"].data.metrics["eval/synth_cls/top1"] == 0.5
    # a stage's run opens when its job is submitted (here: after its upstream ended), so the UI's
    # start time and duration are the stage's own, not the ladder's
    for up, down in (("clip@E14", "mim@18B"), ("mim@18B", "clip@18B")):
        assert runs[down].info.start_time >= runs[up].info.end_time, (up, down)

    _, again = _run(env)
    assert again.submitted == [] and again.ok and set(again.states.values()) == {"skipped"}
    assert len(_runs(env)) == 4  # no new parent run either

    # one key changed: that stage and its dependants rerun, upstream is skipped
    _, changed = _run(env, ["mim.optim.lr=0.002"])
    assert changed.submitted == ["mim@18B", "clip@18B"] and changed.states["clip@E14"] == "skipped"


def test_failed_stage_cancels_its_dependants(env):
    plan, outcome = _run(env, ["mim.train.seed=13"])
    assert not outcome.ok
    assert outcome.states == {"clip@E14": "finished", "mim@18B": "failed", "clip@18B": "cancelled"}
    assert outcome.submitted == ["clip@E14", "mim@18B"]  # the dependant was never started
    assert "diverged" in read_state(plan.stage("mim@18B").out_dir)["error"]
    status = {r.info.run_name: r.info.status for r in _runs(env)}
    assert status["mim@18B"] == "FAILED" and status["clip@18B"] == "KILLED"
    assert status[next(n for n in status if n.startswith("ladder"))] == "FAILED"


def test_unfinished_stage_resumes_in_the_same_run(env):
    from scaling import tracking

    plan, first = _run(env, ["clip@18B.train.seed=7"])
    assert first.states["clip@18B"] == "preempted" and not first.ok
    run_id = first.run_ids["clip@18B"]
    _, second = _run(env, ["clip@18B.train.seed=7"])
    assert second.submitted == ["clip@18B"] and second.ok and second.run_ids["clip@18B"] == run_id
    steps = [m.step for m in tracking.get_metric_history(env["uri"], run_id, "train/loss")]
    assert steps == [1, 2, 3]  # every step once across the two jobs
    assert tracking.run_status(env["uri"], run_id) == "FINISHED"


def _parents(env):
    return [r for r in _runs(env) if r.data.tags.get("role") == "ladder"]


def test_a_ladder_killed_outright_is_continued_in_its_parent_run(env):
    """kill -9 leaves the parent run RUNNING; the rerun of the same plan continues it."""
    ready = env["runs"].parent / "stage-started"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from scaling.ladder import plan_ladder
        from scaling.ladder.dispatch import Dispatcher

        def hang(cfg, logger=None, stop_requested=None):
            Path({str(ready)!r}).touch()
            time.sleep(600)

        plan = plan_ladder("E14", "18B", proxy=True, runs_dir={str(env["runs"])!r},
                           tracking_uri={env["uri"]!r}, experiment={env["experiment"]!r})
        Dispatcher(plan, "debug", tracking_uri={env["uri"]!r}, jobs_dir={str(env["jobs"])!r},
                   stage_fn=hang, poll_s=0.01).run()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=env["runs"].parent)
    deadline = time.monotonic() + 300
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the first stage never started"
    proc.kill()  # SIGKILL: no handler, no finally, no atexit
    proc.wait()
    [orphan] = _parents(env)
    assert orphan.info.status == "RUNNING"

    _, outcome = _run(env)
    assert outcome.ok and outcome.parent_run_id == orphan.info.run_id
    [parent] = _parents(env)
    assert parent.info.run_id == orphan.info.run_id and parent.info.status == "FINISHED"
    children = [r for r in _runs(env) if r.data.tags.get("role") != "ladder"]
    assert sorted(r.info.run_name for r in children) == ["clip@18B", "clip@E14", "mim@18B"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}


def test_a_killed_invocation_of_another_plan_has_its_parent_run_ended(env):
    from scaling import tracking

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process holds any more
    orphan = tracking.start_run(env["uri"], env["experiment"], "ladder E14 -> 18B", tags=tracking.standard_tags(
        role="ladder", plan="an-older-plan", pid=gone.pid))
    _, outcome = _run(env)
    assert outcome.ok and outcome.parent_run_id != orphan
    assert tracking.run_status(env["uri"], orphan) == "KILLED"


def resolved_fake_stage(cfg, logger=None, stop_requested=None):
    """``fake_stage`` that also writes the resolved config where ``run_stage`` writes it."""
    from scaling.config import save_resolved

    save_resolved(cfg, Path(cfg.out_dir) / "config.yaml")
    return fake_stage(cfg, logger, stop_requested)


def test_runs_describe_themselves(env, capsys):
    from scaling import tracking
    from scaling.ladder.cli import main

    assert main(["--from", "E14", "--to", "18B", "--executor", "debug", "--proxy", "--tracking-uri", env["uri"],
                 "--runs-dir", str(env["runs"]), "--experiment", env["experiment"],
                 "--report-dir", str(env["runs"] / "report")], stage_fn=resolved_fake_stage) == 0
    assert "workflowType=machine_learning" in capsys.readouterr().out
    mlc = tracking.client(env["uri"])
    runs = {r.info.run_name: r for r in _runs(env)}
    ids = {name: run.info.run_id for name, run in runs.items()}
    clip = runs["clip@18B"].data
    # the towers the stage builds, not the layer's "model.vision: {}", and the cost model's figures
    assert "model.vision" not in clip.params and "model.text" not in clip.params
    assert int(clip.params["model.vision.depth"]) > 0 and int(clip.params["model.text.width"]) > 0
    assert clip.params["data.image_size"] == clip.params["model.vision.image_size"]
    assert int(clip.params["cost.params"]) > 0 and float(clip.params["cost.gflops_per_sample"]) > 0
    assert "" not in clip.params.values()
    assert runs["mim@18B"].data.params["model.vision.depth"] and "model.text.depth" not in runs["mim@18B"].data.params
    # lineage as links to the runs learned from
    assert runs["mim@18B"].data.tags["lineage.teacher"].endswith(f"/runs/{ids['clip@E14']}")
    assert clip.tags["lineage.init"].endswith(f"/runs/{ids['mim@18B']}")
    assert clip.tags["lineage.text_init"].endswith(f"/runs/{ids['clip@E14']}")
    assert "[mim@18B](" in clip.tags["mlflow.note.content"]
    # the stage's files
    files = {f.path for f in mlc.list_artifacts(ids["clip@18B"])}
    assert {"config.yaml", "progress.json"} <= files
    local = Path(mlc.download_artifacts(ids["clip@18B"], "progress.json", str(env["runs"] / "dl")))
    assert json.loads(local.read_text())["metrics"]["eval/synth_cls/top1"] == 0.5
    # the parent: the plan and its stages' headline metrics
    parent = next(n for n in runs if n.startswith("ladder"))
    assert "plan.json" in {f.path for f in mlc.list_artifacts(ids[parent])}
    assert runs[parent].data.metrics["clip-18B/eval/synth_cls/top1"] == 0.5
    assert runs[parent].data.metrics["clip-E14/eval/synth_cls/top1"] == 0.5
