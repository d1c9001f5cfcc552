"""Storage URLs of a sweep: PostgreSQL through psycopg2, passwords kept out of what is shown,
and clear errors for a misspelt scheme or a server that does not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scaling.sweep.__main__ import main
from scaling.sweep.spec import SweepError, load_sweep
from scaling.uris import rdb_url

TOY = {
    "name": "toy",
    "base": {"function": "scaling.sweep.toy:quadratic"},
    "search_space": {"x": {"type": "float", "low": -5, "high": 5}},
    "objectives": [{"metric": "loss", "direction": "minimize"}],
    "n_trials": 3,
    "workers": 2,
}


def write(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**TOY, **changes}))
    return path


def test_postgresql_url_from_file_or_command_line(tmp_path: Path) -> None:
    url = "postgresql://optuna:s3cret@db.example:5432/sweeps"
    from_file = load_sweep(write(tmp_path, storage=url))
    from_cli = load_sweep(write(tmp_path), [f"storage={url}"])
    assert from_file.storage_url() == from_cli.storage_url() == url
    assert from_cli.storage_label() == "postgresql://optuna:***@db.example:5432/sweeps"
    assert load_sweep(write(tmp_path)).storage_url().endswith(".journal")  # the default stays the journal


def test_bare_postgresql_url_takes_psycopg2() -> None:
    import importlib.util

    url = "postgresql://u@h:1/d"
    expected = url if importlib.util.find_spec("psycopg") else "postgresql+psycopg2://u@h:1/d"
    assert rdb_url(url) == expected
    assert rdb_url("postgresql+psycopg2://u@h:1/d") == "postgresql+psycopg2://u@h:1/d"
    assert rdb_url("mysql://u@h/d") == "mysql://u@h/d"


def test_misspelt_scheme_is_named(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="spelled 'postgresql://'"):
        load_sweep(write(tmp_path, storage="postgres://u:pw@h:5432/d"))


def test_unreachable_server_exits_2_without_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, storage="postgresql://optuna:s3cret@127.0.0.1:1/sweeps")  # nothing listens on port 1
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "cannot open storage 'postgresql://optuna:***@127.0.0.1:1/sweeps'" in err and "s3cret" not in err


def test_status_shows_the_storage_without_its_password(tmp_path: Path) -> None:
    from scaling.sweep.status import STATES, format_status

    spec = load_sweep(write(tmp_path, storage="postgresql://alice:S3cretPW@db.example:5432/sweeps"))
    text = format_status({"counts": dict.fromkeys(STATES, 0), "best": None}, spec)
    assert "storage: postgresql://alice:***@db.example:5432/sweeps" in text and "S3cretPW" not in text
