"""Every stage-config value bounded at load: a bad one stops the command in one line, exit 2,
before a folder is made; names that become folders stay inside the runs folder."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from scaling.config import load_stage_config
from scaling.config_bounds import MAX_BATCH, name_problem
from scaling.config_dialect import ConfigError
from scaling.tracking.store import resolve_uri
from scaling.uris import mask_text


def run(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=1e400", "'optim.lr' is inf: every number must be finite"),
    ("optim.lr=nan", "'optim.lr' is nan: every number must be finite"),
    (f"train.batch_size={10**21}", f"'train.batch_size' is {10**21}, above the limit"),
    ("tracking.uri=ftp://x", "'tracking.uri' is 'ftp://x': scheme 'ftp' is not one MLflow tracks to"),
])
def test_a_stage_refuses_a_bad_value_before_it_runs(tmp_path, override, message):
    out_dir = tmp_path / "stage"
    out = run("scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(out_dir), override, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: command line: {message}" or (
        message in out.stderr and out.stderr.strip().count("\n") == 0), out.stderr
    assert not out_dir.exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--experiment", "x/../../../escape"), "'--experiment' is 'x/../../../escape': use letters, digits"),
    (("--tracking-uri", "ftp://x"), "'--tracking-uri' is 'ftp://x': scheme 'ftp' is not one MLflow tracks to"),
    (("--tracking-uri", "ftp://al:S3cretPW@x"), "'--tracking-uri' is 'ftp://al:***@x'"),
])
def test_the_ladder_dry_run_refuses_a_bad_name_or_uri(tmp_path, args, message):
    out = run("scaling.ladder", "--from", "E14", "--to", "18B", "--dry-run", "--runs-dir", str(tmp_path / "runs"),
              *args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
    assert "S3cretPW" not in out.stderr + out.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("override", "key"), [
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.text_lr=0", "optim.text_lr"),
    ("optim.text_weight_decay=.inf", "optim.text_weight_decay"),
    ("model.vision={mlp_ratio: .nan}", "model.vision.mlp_ratio"),
    ("eval.batch_size=4194304", "eval.batch_size"),
    ("train.samples=1000000000001", "train.samples"),
    ("data.synth_samples=100000000", "data.synth_samples"),
    ("phases=[{batch_size: 4194304}]", "phases[0].batch_size"),
    ("stage.name=..", "stage.name"),
    ("tracking.experiment=a b", "tracking.experiment"),
])
def test_bounds_name_the_key(override, key):
    with pytest.raises(ConfigError, match="^command line: '" + re.escape(key) + "'"):
        load_stage_config("clip", "B16", overrides=[override])


def test_sane_values_and_names_load():
    cfg = load_stage_config("clip", "B16", overrides=[f"train.batch_size={MAX_BATCH}", "optim.weight_decay=0",
                                                      "tracking.experiment=ladder-eva_2.x", "stage.name=clip@B16+a"])
    assert cfg.train.batch_size == MAX_BATCH
    assert name_problem("clip@18B") is None and name_problem(".hidden") and name_problem("a/b")


def test_a_bare_postgresql_tracking_uri_takes_the_installed_driver():
    bare = "postgresql://u:p@h:5432/db"
    expected = bare if importlib.util.find_spec("psycopg") else "postgresql+psycopg2://u:p@h:5432/db"
    assert resolve_uri(bare) == expected
    assert resolve_uri("postgresql+pg8000://u@h/db") == "postgresql+pg8000://u@h/db"
    load_stage_config("clip", "B16", overrides=["tracking.uri=postgresql://u:p@h:5432/db"])


def test_masking_keeps_passwords_out_of_text():
    line = "View run at http://alice:S3cret@PW@host:5000/#/x and mysql://b:pw2@h/d?password=pw3&x=1"
    masked = mask_text(line)
    assert masked == "View run at http://alice:***@host:5000/#/x and mysql://b:***@h/d?password=***&x=1"
    assert mask_text("http://host:5000/a@b sqlite:////tmp/m.db") == "http://host:5000/a@b sqlite:////tmp/m.db"
