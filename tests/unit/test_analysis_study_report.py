"""The report of a study: the law with its held-out-stage rollout, the two-step law, the
weak-to-strong section and each stage's own running time, against a real (SQLite) MLflow store
shaped like ``python -m scaling.study`` records: 5 CLIP stages whose errors follow a known law,
each in arms ``mim_init`` / ``random_init`` / ``scratch`` over 2 seeds."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "study-test"
RUNGS = {"B16": 2e11, "L14": 5e11, "E14": 1.2e12, "8B": 3e12, "18B": 7e12}  # final training FLOPs
ALPHA, ERR0 = -0.1, 0.9  # mim_init error = ERR0 * (C / 1e11)^ALPHA
PENALTY = {"mim_init": 0.0, "random_init": 0.05, "scratch": 0.07}  # top-1 lost without the MIM init
SEEDS = 2
WAIT_S, RUN_S = 30.0, 60.0  # each run opens WAIT_S before its job starts, then runs RUN_S


def _loss(err: float) -> float:
    # proportional to the error: a power law of compute (step 1), accuracy linear in it (step 2)
    return 4.0 * err


def _run(mlc, exp_id: str, parent: str, t0: int, rung: str, arm: str | None, seed: int, rng) -> None:
    from mlflow.entities import Metric

    base = f"clip@{rung}"
    name = base if arm in (None, "mim_init") and seed == 0 else f"{base}.{arm}.s{seed}"
    tags = {"mlflow.parentRunId": parent, "mlflow.runName": name, "stage": name, "rung": rung, "kind": "clip",
            "proxy": "true", "stage_started_at": f"{t0 / 1000 + WAIT_S:.3f}"}
    if arm:
        tags |= {"arm": arm, "seed": str(seed), "base_stage": base}
    from mlflow.entities import Param

    rid = mlc.create_run(exp_id, start_time=t0, tags=tags, run_name=name).info.run_id
    params = [Param(k, v) for k, v in {"stage.kind": "clip", "stage.rung": rung, "stage.proxy": "True",
                                       "train.samples": "1000"}.items()]  # fmt: skip
    flops = RUNGS[rung]
    final_err = ERR0 * (flops / 1e11) ** ALPHA + PENALTY[arm or "mim_init"] + rng.normal(0, 0.003)
    metrics = [Metric("train/flops", flops, t0, 30)]
    for step in range(1, 31):  # the loss every step, an evaluation every 10
        seen, ts = 1000 * step / 30, t0 + int(1000 * (WAIT_S + RUN_S * step / 30))
        err = min(0.99, final_err * (30 / step) ** 0.1)
        metrics += [Metric("train/samples_seen", seen, ts, step), Metric("train/loss", _loss(err), ts, step)]
        if step % 10 == 0:
            metrics += [Metric("eval/synth_cls/top1", 1 - err, ts, step),
                        Metric("eval/synth_cls/loss", 0.8 * _loss(err), ts, step)]  # the task loss
    mlc.log_batch(rid, metrics=metrics, params=params)
    mlc.set_terminated(rid, "FINISHED", end_time=t0 + int(1000 * (WAIT_S + RUN_S)))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("study_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlc = MlflowClient(tracking_uri=uri)
    exp_id = mlc.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    t0 = 1_700_000_000_000
    parent = mlc.create_run(exp_id, start_time=t0, run_name="study", tags={"role": "study"}).info.run_id
    rng = np.random.default_rng(0)
    _run(mlc, exp_id, parent, t0, "B16", None, 0, rng)  # the bootstrap teacher: no arms
    for i, rung in enumerate(list(RUNGS)[1:]):
        for arm in PENALTY:
            for seed in range(SEEDS):
                _run(mlc, exp_id, parent, t0 + 1000 * (i + 1), rung, arm, seed, rng)
    mlc.set_terminated(parent, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from scaling.analysis.report import build_report

    return build_report(store, EXPERIMENT, tmp_path_factory.mktemp("study_report"), log_artifacts=True,
                        sections=("ladder",), formats=("png",), two_step=True)


def test_weak_to_strong_section_has_the_gain_and_its_interval(store, report) -> None:
    from scaling.analysis.arms import weak_to_strong
    from scaling.analysis.load import runs_frame

    table = weak_to_strong(runs_frame(store, EXPERIMENT, with_costs=False), "eval/synth_cls/top1").set_index("stage")
    assert list(table.index) == ["clip@L14", "clip@E14", "clip@8B", "clip@18B"]  # the teacher has no arms
    assert (table[["n_mim_init", "n_random_init", "n_scratch"]] == SEEDS).all().all()
    assert (table["upstream"] == "shared").all() and (table["n_random_init_compute"] == 0).all()
    for stage, row in table.iterrows():
        assert row["mim_init-random_init"] == pytest.approx(PENALTY["random_init"], abs=0.01), stage
        assert 0 < row["mim_init-random_init_low"] < row["mim_init-random_init"] < row["mim_init-random_init_high"]
        assert row["mim_init-scratch"] == pytest.approx(PENALTY["scratch"], abs=0.01)
    text = report.path.read_text()
    assert "## Weak-to-strong: MIM initialisation against its controls" in text
    top1, losses = text.split("Held-out losses, same runs")
    assert top1.count("gain: interval above 0") == 4
    # the task loss falls with the error, so the MIM init lowers it with the interval above 0 as well
    # (against each control: random_init and scratch)
    assert losses.split("\n## ")[0].count("`eval/synth_cls/loss` |") == 8
    assert losses.split("\n## ")[0].count("gain: interval above 0") == 8
    # the arms ran the same seeds: the interval is a paired t, and the report names it
    assert "paired t, 2 seeds" in top1 and "Welch" in text and "sample efficiency" in text


def test_law_uses_the_ladder_arm_and_rolls_out_to_held_out_stages(report) -> None:
    text = report.path.read_text()
    b = float(re.search(r"exponent \[([-\d.e]+), ([-\d.e]+)\]", text).group(1))
    hi = float(re.search(r"exponent \[([-\d.e]+), ([-\d.e]+)\]", text).group(2))
    assert b <= ALPHA <= hi  # the control arms (worse) are left out of the law
    preds = report.predictions.set_index("label")
    assert preds.loc[["clip@B16", "clip@L14", "clip@E14"], "predicted"].isna().all()  # < 3 stages below
    for stage in ("clip@8B", "clip@18B"):
        achieved = 1 - ERR0 * (RUNGS[stage[5:]] / 1e11) ** ALPHA
        assert preds.loc[stage, "achieved"] == pytest.approx(achieved, abs=0.01)
        assert abs(preds.loc[stage, "rel_error"]) < 0.05
        assert preds.loc[stage, "low"] <= preds.loc[stage, "predicted"] <= preds.loc[stage, "high"]
    assert "### Held-out stages: predicted vs achieved" in text and "Mean |relative error| over 2" in text


def test_two_step_law_is_fitted_and_rolled_out(report) -> None:
    text = report.path.read_text()
    # step 1 is the held-out task loss of each evaluation (OLMo's), not the training loss
    assert "## Two-step law: compute -> `eval/synth_cls/loss` -> accuracy" in text
    assert "### Held-out stages (two-step)" in text
    section = text.split("### Held-out stages (two-step)")[1]
    # two held-out stages, each with its relative error (how good a sigmoid extrapolates is the
    # fits' test, on data drawn from the two-step model; here accuracy is linear in the loss)
    errors = [float(v) for v in re.findall(r"\| ([+-]\d+\.\d) % \|", section)]
    assert len(errors) == 2 and all(abs(e) < 50 for e in errors)


def test_minutes_are_the_stage_running_time_without_the_wait(store, report) -> None:
    from scaling.analysis.load import runs_frame
    from scaling.analysis.report_ladder import running_seconds

    runs = runs_frame(store, EXPERIMENT)
    stages = runs[~runs["is_parent"]]
    own, fallback = running_seconds(stages)
    assert not fallback
    assert np.allclose(own, RUN_S, atol=0.01)
    assert np.allclose(stages["duration_s"], WAIT_S + RUN_S, atol=0.01)
    text = report.path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| clip@18B |"))
    assert row.rstrip(" |").endswith(f"{RUN_S / 60:.4g}")
    assert not any("stage_started_at" in n for n in report.notes)


def test_fewer_than_three_stages_is_not_a_law(store, tmp_path: Path) -> None:
    from scaling.analysis.load import client
    from scaling.analysis.report import build_report

    mlc = client(store)
    exp_id = mlc.create_experiment("two-stages-test")
    parent = mlc.create_run(exp_id, run_name="ladder").info.run_id
    rng = np.random.default_rng(1)
    for i, rung in enumerate(("B16", "L14")):
        _run(mlc, exp_id, parent, 1_700_000_000_000 + i, rung, None, 0, rng)
    rep = build_report(store, "two-stages-test", tmp_path, sections=("ladder",), formats=("png",))
    text = rep.path.read_text()
    assert "no law drawn" in text and "needs at least 3 points" in text
    assert "exponent [" not in text and not math.isnan(len(rep.figures))


def test_law_points_leave_out_the_bootstrap_teacher_and_the_controls() -> None:
    import pandas as pd

    from scaling.analysis.predict import law_points

    points = pd.DataFrame(
        [("r0", "clip@B16", "clip@B16", "bootstrap", 8e11, 0.30, True, 10),  # from scratch: another recipe
         ("r1", "clip@L14", "clip@L14", "", 4e11, 0.12, True, 10),
         ("r2", "clip@E14", "clip@E14", "mim_init", 9e11, 0.14, True, 10),
         ("r3", "clip@E14.random_init.s0", "clip@E14", "random_init", 9e11, 0.09, True, 10),
         ("r4", "clip@8B", "clip@8B", "", 2e12, 0.10, False, 5)],  # not a final evaluation
        columns=["run_id", "label", "stage", "arm", "flops", "value", "final", "step"])
    law = law_points(points)
    assert list(law["stage"]) == ["clip@L14", "clip@E14"] and list(law["value"]) == [0.12, 0.14]
