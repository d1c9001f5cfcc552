"""The MLflow UI a researcher opens: the address the ladder prints, in a real headless Chromium
with a fresh profile, against a real ``mlflow server``, lands on the runs table of the stages
with the zero-shot column. The screenshot is kept in .cache/test-artifacts/."""

from __future__ import annotations

import shutil

import pytest

from scaling import tracking
from scaling.ladder import plan_ladder
from scaling.ladder.cli import announce
from scaling.tracking import ui
from tests.conftest import CACHE
from tests.services.chromium import dump_dom, find_chromium, screenshot

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    return path


def test_the_printed_address_opens_the_runs_table_with_the_zero_shot_column(mlflow_server, chromium, tmp_path, capsys):
    uri, experiment = mlflow_server.uri, "ui-ladder"
    plan = plan_ladder("E14", "18B", proxy=True, runs_dir=tmp_path, experiment=experiment, allow_missing_teacher=True)
    announce(plan, uri, "python -m scaling.ladder --from E14 --to 18B", tmp_path / "report.md")
    printed = capsys.readouterr().out
    parent = tracking.start_run(uri, experiment, "ladder E14 -> 18B")
    top1 = {"clip@E14": 0.31, "clip@18B": 0.146}
    mlc = tracking.client(uri)
    for stage in plan.stages:
        run_id = tracking.start_run(uri, experiment, stage.name, parent_run_id=parent)
        key, value = (plan.ladder.law_metric, top1[stage.name]) if stage.name in top1 else ("eval/mim/loss", 0.42)
        mlc.log_metric(run_id, key, value, step=4000)
        mlc.log_metric(run_id, "train/loss", 1.5, step=4000)
    url = next(word for word in printed.split() if "/#/experiments/" in word)
    exp = mlc.get_experiment_by_name(experiment)
    assert url == ui.runs_url(exp.experiment_id, uri)
    assert "ladder E14 -> 18B" in exp.tags[ui.NOTE_TAG] and "report.md" in exp.tags[ui.NOTE_TAG]

    dom = dump_dom(chromium, url)
    assert "Detect Issues" not in dom  # not the GenAI overview a fresh profile gets by default
    for name in ("clip@E14", "mim@18B", "clip@18B"):  # the stage runs, listed flat, not folded under the parent
        assert f">{name}<" in dom, name
    assert plan.ladder.law_metric in dom and ">0.146<" in dom  # the zero-shot column and a stage's value
    assert dom.index(">clip@E14<") < dom.index(">clip@18B<") < dom.index(">mim@18B<")  # best zero-shot first
    shot = screenshot(chromium, url, tmp_path / "mlflow_runs_view.png")
    assert shot.stat().st_size > 10_000
    kept = CACHE / "test-artifacts"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, kept / shot.name)
