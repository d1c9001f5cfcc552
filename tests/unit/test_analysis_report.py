"""Loader, predictions and reports against a real (SQLite) MLflow store shaped like the ladder's
and the sweep's records (see analysis_fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit import analysis_fixtures as fx

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return fx.shared_store(tmp_path_factory)


def test_runs_frame_has_lineage_costs_and_filters(store: str) -> None:
    from scaling.analysis.load import runs_frame

    df = runs_frame(store, fx.LADDER_EXPERIMENT)
    assert len(df) == 6 and df["is_parent"].sum() == 1
    stages = df[~df["is_parent"]].set_index("label")
    assert set(stages["stage"]) == set(stages.index)  # the stage tag is the stage's name, kind@rung
    assert set(stages["kind"]) == {"clip", "mim"}
    assert set(stages.index) == {"clip@B16", "mim@L14", "clip@L14", "mim@E14", "clip@E14"}
    assert stages.loc["mim@L14", "teacher_run_id"] == stages.loc["clip@B16", "run_id"]
    assert stages.loc["clip@E14", "init_run_id"] == stages.loc["mim@E14", "run_id"]
    assert (stages["parent_run_id"] == df[df["is_parent"]]["run_id"].iloc[0]).all()
    assert stages["params.train.samples"].notna().all() and "metrics.train/loss" in stages
    # costs from the cost model: bigger rungs cost more, for the same kind
    assert stages["flops_source"].eq("cost model").all()
    clip = stages[stages["kind"] == "clip"].sort_values("flops")
    assert list(clip.index) == ["clip@B16", "clip@L14", "clip@E14"]
    assert clip["n_params"].is_monotonic_increasing
    only = runs_frame(store, fx.LADDER_EXPERIMENT, kind="mim", with_costs=False)
    assert set(only["label"]) == {"mim@L14", "mim@E14"}
    assert len(runs_frame(store, fx.LADDER_EXPERIMENT, stage=["clip@B16", "clip@L14"])) == 2
    sweep = runs_frame(store, fx.SWEEP_EXPERIMENT, study=fx.STUDY)
    assert sweep["optuna_trial_number"].dropna().astype(int).tolist() == list(range(12))


def test_unknown_experiment_and_filter_are_clear_errors(store: str) -> None:
    from scaling.analysis.load import AnalysisError, runs_frame

    with pytest.raises(AnalysisError, match=r"no MLflow experiment named 'nope' \(known: .*ladder-test"):
        runs_frame(store, "nope")
    with pytest.raises(AnalysisError, match="unknown filter"):
        runs_frame(store, fx.LADDER_EXPERIMENT, colour="red")


def test_metric_history_is_ordered_per_step(store: str) -> None:
    from scaling.analysis.load import metric_history, runs_frame

    df = runs_frame(store, fx.LADDER_EXPERIMENT, stage="clip@B16", with_costs=False)
    hist = metric_history(store, df["run_id"].iloc[0], "train/samples_seen")
    assert list(hist["step"]) == sorted(hist["step"]) and len(hist) == fx.SAMPLES["B16"] // fx.BATCH
    assert hist["value"].iloc[-1] == fx.SAMPLES["B16"]
    assert metric_history(store, df["run_id"].iloc[0], "never/logged").empty


def test_compute_points_fit_and_next_rung(store: str) -> None:
    from scaling.analysis.load import runs_frame
    from scaling.analysis.predict import MetricSpec, compute_points, fit_frontier, next_rung

    runs = runs_frame(store, fx.LADDER_EXPERIMENT, kind="clip")
    points = compute_points(store, runs, "eval/synth_cls/top1")
    assert points["final"].sum() == 3 and len(points) > 3
    spec = MetricSpec.for_key("eval/synth_cls/top1", points["value"])
    assert spec.higher_is_better and not spec.percent
    fit, front = fit_frontier(points, spec)
    assert fit.b < 0 and len(front) >= 3
    # the final points follow err = err0 * (C / 1e12)^ALPHA: the frontier fit finds a falling law
    finals = points[points["final"]]
    assert np.all(np.diff(spec.to_fit(finals.sort_values("flops")["value"])) < 0)
    name, flops = next_rung(runs)
    assert name == "8B" and flops > runs["flops"].max()


def test_ladder_report_writes_figures_tables_and_predictions(store: str, tmp_path: Path) -> None:
    from scaling.analysis.load import client, runs_frame
    from scaling.analysis.report import build_report

    rep = build_report(store, fx.LADDER_EXPERIMENT, tmp_path, log_artifacts=True)
    names = {p.name for p in rep.figures}
    for stem in ("bubble", "compute_scaling", "ladder_lineage", "training_curves"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    text = rep.path.read_text()
    for heading in ("# Scaling report: ladder-test", "## Ladder stages", "## Scaling with compute",
                    "### Held-out stages: predicted vs achieved", "**Next rung 8B**",
                    "## Published EVA-CLIP results"):  # fmt: skip
        assert heading in text
    assert "![metric vs compute](compute_scaling.png)" in text
    assert "exponent [" in text and "3 stages" in text and "t over 3 stages" in text
    # three CLIP stages: a law, but no stage has 3 smaller ones to be predicted from
    assert "No stage has 3 smaller stages" in text
    assert rep.predictions["predicted"].isna().all() and len(rep.predictions) == 3
    runs = runs_frame(store, fx.LADDER_EXPERIMENT, kind="clip", with_costs=False).set_index("label")
    assert "metrics.pred/eval/synth_cls/top1" not in runs or runs["metrics.pred/eval/synth_cls/top1"].isna().all()
    # stages logged without the start tag: the report says its minutes include waiting
    assert any("stage_started_at" in n for n in rep.notes)
    # report and figures attached to the parent run
    parent = runs_frame(store, fx.LADDER_EXPERIMENT, with_costs=False).query("is_parent")["run_id"].iloc[0]
    logged = {a.path for a in client(store).list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/compute_scaling.png" in logged


def test_sweep_report_draws_the_four_sweep_figures(store: str, tmp_path: Path) -> None:
    from scaling.analysis.load import runs_frame
    from scaling.analysis.report import build_report
    from scaling.analysis.sweep_frame import importances, sweeps

    (sw,) = sweeps(runs_frame(store, fx.SWEEP_EXPERIMENT, with_costs=False))
    assert (sw.study, sw.objective, sw.direction) == (fx.STUDY, "eval/synth_cls/top1", "maximize")
    assert sw.hp == ["lr", "mlp", "patch_dropout"] and sw.space["lr"]["log"] is True
    assert sw.trials["state"].value_counts().to_dict() == {"COMPLETE": 9, "PRUNED": 2, "FAIL": 1}
    best = sw.best()
    assert best["objective"] == sw.complete["objective"].max()
    imp = importances(sw)
    assert set(imp) == {"lr", "mlp", "patch_dropout"} and sum(imp.values()) == pytest.approx(1.0)
    rep = build_report(store, fx.SWEEP_EXPERIMENT, tmp_path, sections=("sweep",), formats=("png",))
    names = {p.name for p in rep.figures}
    for kind in ("history", "importance", "parallel", "ablation"):
        assert f"sweep_{fx.STUDY}_{kind}.png" in names
    text = rep.path.read_text()
    assert f"## Sweep '{fx.STUDY}'" in text and f"Best: trial {int(best['trial'])}" in text
    assert "## Ladder stages" not in text


def test_empty_experiment_gives_notes_and_the_published_chart(store: str, tmp_path: Path) -> None:
    from scaling.analysis.load import client
    from scaling.analysis.report import build_report

    mlc = client(store)
    if mlc.get_experiment_by_name("empty-test") is None:
        mlc.create_experiment("empty-test")
    rep = build_report(store, "empty-test", tmp_path, formats=("png",))
    assert [p.name for p in rep.figures] == ["bubble.png"]
    assert any("no runs yet" in n for n in rep.notes)
    assert "## Notes" in rep.path.read_text()
    from scaling.analysis.report import write_report

    path = write_report(store, "empty-test", tmp_path / "again", formats=("png",), log_artifacts=True)
    assert path == tmp_path / "again" / "report.md" and path.exists()  # no parent run: nothing to attach


def test_single_rung_reports_too_few_points_without_failing(store: str, tmp_path: Path) -> None:
    from scaling.analysis.load import client
    from scaling.analysis.report import build_report

    root = Path(tmp_path)
    name = "one-rung-test"
    mlc = client(store)
    exp_id = mlc.get_experiment_by_name(name) or mlc.create_experiment(name)
    exp_id = exp_id if isinstance(exp_id, str) else exp_id.experiment_id
    parent = mlc.create_run(exp_id, tags={"mlflow.runName": "ladder"}).info.run_id
    fx._stage(mlc, exp_id, parent, 1_700_000_000_000, kind="clip", rung="B16", evals=1)
    rep = build_report(store, name, root / "out", sections=("ladder",), formats=("png",))
    assert any("needs at least 3 points" in n for n in rep.notes)
    assert (root / "out" / "compute_scaling.png").exists()


def test_cli_report_and_published(store: str, tmp_path: Path, capsys) -> None:
    from scaling.analysis.__main__ import main
    from scaling.analysis.load import client

    if client(store).get_experiment_by_name("empty-test") is None:
        client(store).create_experiment("empty-test")
    assert main(["report", "--experiment", "empty-test", "--tracking-uri", store, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "bubble.svg").exists()
    assert "note: experiment 'empty-test' has no runs yet" in capsys.readouterr().err
    assert main(["report", "--experiment", "missing", "--tracking-uri", store, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no MLflow experiment named 'missing'" in err and "Traceback" not in err
    assert main(["published", "--table", "clip_models"]) == 0
    out = capsys.readouterr().out
    assert "EVA-CLIP-18B" in out and "80.7" in out
    assert main(["published", "--table", "nope"]) == 2


def test_runs_frame_keeps_resumed_steps_once(store: str) -> None:
    from scaling.analysis.load import client, metric_history, runs_frame

    rid = runs_frame(store, fx.LADDER_EXPERIMENT, stage="clip@L14", with_costs=False)["run_id"].iloc[0]
    mlc = client(store)
    mlc.log_metric(rid, "test/resumed", 1.0, step=1, timestamp=1)
    mlc.log_metric(rid, "test/resumed", 2.0, step=1, timestamp=2)  # a requeued job re-sends step 1
    hist = metric_history(store, rid, "test/resumed")
    assert hist.to_dict("list")["value"] == [2.0]
    assert isinstance(runs_frame(store, fx.LADDER_EXPERIMENT, with_costs=False), pd.DataFrame)


def test_importing_the_package_loads_neither_mlflow_nor_matplotlib() -> None:
    import subprocess
    import sys

    code = ("import sys, scaling.analysis.report, scaling.analysis.load; "
            "print('mlflow' in sys.modules, 'matplotlib' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_lineage_draws_every_upstream_edge(store: str) -> None:
    from scaling.analysis.load import runs_frame
    from scaling.analysis.plots.ladder import lineage

    runs = runs_frame(store, fx.LADDER_EXPERIMENT)
    fig = lineage(runs[~runs["is_parent"]])
    texts = [t.get_text() for t in fig.axes[0].texts]
    # mim stages: a teacher each; clip@L14/E14: an init (their MIM stage) and a text init (previous CLIP)
    assert texts.count("teacher") == 2 and texts.count("init") == 2 and texts.count("text init") == 2
    boxes = [t for t in texts if "@" in t]
    assert len(boxes) == 5 and any(b.startswith("clip@E14\nCLIP") for b in boxes)
