"""A study over budgets, with shared and reseeded upstream and a compute-matched control, and a
law over 3 seeds per stage against the naive predictions: the report and its tables, from a real
(SQLite) MLflow store shaped like ``python -m scaling.study`` records (``study_fixtures``)."""

from __future__ import annotations

import re

import pytest

from tests.unit import study_fixtures as sf


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("w2s_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sf.build_study(uri, root)
    return uri


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from scaling.analysis.report import build_report

    return build_report(store, sf.EXPERIMENT, tmp_path_factory.mktemp("w2s_report"), metric="eval/synth_ret/loss",
                        sections=("ladder",), formats=("png",))


def test_gain_per_budget_against_both_controls_with_both_kinds_of_upstream(store) -> None:
    from scaling.analysis.arms import gains
    from scaling.analysis.load import runs_frame

    runs = runs_frame(store, sf.EXPERIMENT, with_costs=False)
    top1 = gains(runs, "eval/synth_cls/top1")
    top1 = top1[top1["stage"] == "clip@18B"]
    assert set(top1["upstream"]) == {"shared", "reseeded"}
    assert set(top1["budget"]) == {str(b) for b in sf.GAIN}
    for _, row in top1.iterrows():
        assert row["n_mim_init"] == row["n_control"] == 3
        assert row["method"] == "paired t, 3 seeds"  # the arms ran the same seeds
        truth = sf.GAIN[int(row["budget"])] if row["control"] == "random_init" else 0.0
        assert row["gain"] == pytest.approx(truth, abs=0.01) and row["low"] < row["gain"] < row["high"]
        assert row["high"] - row["low"] < 0.05  # the seed effect, shared by the arms, cancels when paired
        assert row["samples"] == int(row["budget"])
        assert row["compute"] == pytest.approx(sf.LAW["18B"] / sf.OWN_BUDGET * int(row["budget"]) + sf.MIM_FLOPS)
    # a loss falls with the MIM init: its gain (control - mim_init) is positive, against both controls
    loss = gains(runs, "eval/synth_ret/loss")
    loss = loss[loss["stage"] == "clip@18B"]
    assert set(loss["control"]) == {"random_init", "random_init_compute"} and (loss["low"] > 0.4).all()


def test_report_names_the_method_the_questions_and_draws_the_gain_curve(report) -> None:
    text = report.path.read_text()
    assert "paired t, 3 seeds" in text and "Welch" in text
    assert "sample efficiency" in text and "compute efficiency" in text
    assert "| clip@18B | 2000 | shared |" in text and "| clip@18B | 2000 | reseeded |" in text
    assert "random_init_compute samples" in text
    assert any(p.name == "weak_to_strong_budgets.png" for p in report.figures)


def test_law_over_seeds_against_the_naive_predictions(report) -> None:
    text = report.path.read_text()
    checks = report.predictions.set_index("label")
    # the law's points: the ladder's own budget only, averaged over seeds
    assert checks.loc["clip@B16", "n_runs"] == 3 and checks.loc["clip@18B", "n_runs"] == 5
    assert checks.loc["clip@B16", "sd"] > 0
    assert checks.loc["clip@L14", "same_as_below"] == pytest.approx(checks.loc["clip@B16", "achieved"])
    assert not checks.loc["clip@E14", "monotone"] and checks.loc["clip@8B", "monotone"]
    assert re.search(r'The law (beats|does NOT beat) "same as the stage below"', text)
    assert re.search(r'The law (beats|does NOT beat) "extrapolate the last two points"', text)
    assert "**Not monotone in compute**: clip@E14 (worse than clip@L14 with less compute)" in text
    assert "mean ± sd over 3/5 seed(s)" in text


def test_law_on_inherited_compute_says_so(store, tmp_path) -> None:
    from scaling.analysis.report import build_report

    own = build_report(store, sf.EXPERIMENT, tmp_path / "own", metric="eval/synth_ret/loss", sections=("ladder",),
                       formats=("png",))
    rep = build_report(store, sf.EXPERIMENT, tmp_path / "inherited", metric="eval/synth_ret/loss",
                       sections=("ladder",), formats=("png",), compute="inherited")
    assert "Compute axis: the stage's own training FLOPs plus those of every stage" in rep.path.read_text()
    assert "Compute axis: the stage's own training FLOPs." in own.path.read_text()
    a, b = own.predictions.set_index("label"), rep.predictions.set_index("label")
    assert b.loc["clip@B16", "flops"] == pytest.approx((1 + sf.INHERITED) * a.loc["clip@B16", "flops"])
