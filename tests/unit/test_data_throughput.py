"""Loader cores per GPU: the benchmark's figures file, its defaults, and the plan's column and warning."""

from __future__ import annotations

import pytest

from scaling import loader_costs as throughput
from scaling.ladder import plan_ladder
from scaling.ladder.estimate import plan_rows
from scaling.ladder.render import plan_table


def test_figures_file_round_trip_and_defaults(tmp_path):
    path = throughput.write_figures({224: 300.0, 448: 75.0}, tmp_path / "t.json", host="x")
    figures, source = throughput.load_figures(path)
    assert figures == {224: 300.0, 448: 75.0} and str(path) in source
    assert throughput.samples_per_core(224, figures) == 300.0
    # an unmeasured size: the nearest measured one, scaled by the pixel count
    assert throughput.samples_per_core(336, figures) == pytest.approx(300.0 * (224 / 336) ** 2)
    (tmp_path / "bad.json").write_text("{not json")
    for missing in (tmp_path / "bad.json", tmp_path / "absent.json"):
        assert throughput.load_figures(missing) == (throughput.DEFAULT_SAMPLES_PER_CORE,
                                                    throughput.DEFAULT_SOURCE)


def test_cores_figure_and_warning():
    figures = {224: 100.0}
    ok = throughput.loader_cores(150.0, 224, cpus_per_task=2, figures=figures)
    assert ok["loader_cores_per_gpu"] == pytest.approx(1.5) and ok["loader_warning"] is None
    short = throughput.loader_cores(450.0, 224, cpus_per_task=2, figures=figures)
    assert short["loader_cores_per_gpu"] == pytest.approx(4.5)
    assert "4.5 loader cores" in short["loader_warning"] and "cpus_per_task" in short["loader_warning"]


def test_plan_warns_about_a_stage_short_of_loader_cores(tmp_path, monkeypatch):
    """On cores as slow as 10 samples/s, clip@E14 (~35 samples/s per GPU planned) needs more than
    the 2 cores its task gets; the 18B stages (under 10 samples/s per GPU) do not."""
    monkeypatch.setenv("SCALING_DATA_THROUGHPUT", str(tmp_path / "slow.json"))
    throughput.write_figures({224: 10.0})
    plan = plan_ladder("L14", "18B", proxy=False, runs_dir=tmp_path / "runs", allow_missing_teacher=True)
    rows = {r["stage"]: r for r in plan_rows(plan)}
    e14 = rows["clip@E14"]
    assert e14["loader_cores_per_gpu"] == pytest.approx(e14["samples_per_s_per_gpu"] / 10.0)
    assert e14["loader_cores_per_gpu"] > plan.stage("clip@E14").cfg.resources.cpus_per_task
    assert e14["loader_warning"] and rows["clip@18B"]["loader_warning"] is None
    assert rows["mim@18B"]["loader_warning"] is None
    text = plan_table(list(rows.values()))
    assert "loader cores/GPU" in text and "warning: clip@E14 needs" in text
    assert "warning: clip@18B" not in text
