"""``report`` and the ``status`` commands only read: no store, folder or file appears (an existing
store keeps its experiments: ``test_tracking.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def made(folder: Path, before: set[Path]) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p not in before)


def test_report_on_a_missing_store_says_so_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from scaling.analysis.__main__ import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    assert main(["report", "--experiment", "ladder-eva", "--tracking-uri", uri]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert made(tmp_path, set()) == []


def test_ladder_status_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    from scaling.ladder.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["status", "--from", "E14", "--to", "18B", "--proxy"]) == 0
    assert "clip@18B" in capsys.readouterr().out
    assert made(tmp_path, set()) == []


def test_sweep_status_of_a_sweep_never_run_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from scaling.sweep.__main__ import main

    sweep = tmp_path / "patch_dropout.yaml"
    shutil.copy(REPO / "sweeps" / "patch_dropout.yaml", sweep)
    monkeypatch.chdir(tmp_path)
    assert main(["status", str(sweep)]) == 2
    assert "no study 'patch_dropout'" in capsys.readouterr().err
    assert made(tmp_path, set()) == [sweep.name]
