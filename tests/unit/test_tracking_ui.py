"""The MLflow UI addresses and the experiment's description and runs view (SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

from scaling import tracking
from scaling.tracking import ui


def test_a_sqlite_store_is_browsed_through_mlflow_ui_at_its_runs_view(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert ui.ui_command(uri) == f"mlflow ui --backend-store-uri {uri}" and ui.ui_base(uri) == ui.DEFAULT_UI
    assert ui.ui_command("http://127.0.0.1:5123/") is None and ui.ui_base("http://127.0.0.1:5123/") == "http://127.0.0.1:5123"
    assert ui.where_to_look(uri, "nothing-yet") == []
    experiment_id = ui.publish_view(uri, "ladder-x", ["eval/synth_cls/top1", "train/loss"])
    ui.describe_experiment(uri, "ladder-x", ui.ladder_description("eva E14 -> 18B", "python -m scaling.ladder", "r.md"))
    tags = tracking.client(uri).get_experiment(experiment_id).tags
    view = json.loads(tags[ui.VIEW_TAG_PREFIX + ui.VIEW_KEY])
    assert view["orderByKey"] == "metrics.`eval/synth_cls/top1`" and view["orderByAsc"] is False
    assert "`python -m scaling.ladder`" in tags[ui.NOTE_TAG] and "`r.md`" in tags[ui.NOTE_TAG]
    url = f"{ui.DEFAULT_UI}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=scaling"
    assert ui.where_to_look(uri, "ladder-x")[1].split()[2] == url
    assert ui.main(["--tracking-uri", uri, "--port", "5001", "--print-only"]) == 0
    assert f"ladder-x: {url.replace(':5000', ':5001')}" in capsys.readouterr().out
    assert ui.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--print-only"]) == 2
    assert not (tmp_path / "none.db").exists()
