"""``python -m scaling.train``: help lists the config sections; user errors are one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scaling.paths import REPO_ROOT
from scaling.stage_state import stage_run_id


def cli(*args, cwd=REPO_ROOT, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "scaling.train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def test_help_lists_options_and_config_sections():
    out = cli("--help")
    assert out.returncode == 0
    for word in ("--stage", "--rung", "--teacher", "--init", "--no-proxy", "optim: name, lr", "train: samples"):
        assert word in out.stdout


def test_config_errors_exit_2_in_one_line():
    out = cli("--stage", "clip", "--rung", "B16", "optim.lrr=1")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "optim.lr" in out.stderr
    assert cli("--stage", "clip", "--rung", "nope").returncode == 2
    assert cli("--stage", "dino", "--rung", "B16").returncode == 2  # argparse choices


def test_mim_without_teacher_says_what_to_set(tmp_path):
    out = cli("--stage", "mim", "--rung", "L14", "--out", str(tmp_path / "mim"), f"data.cache_dir={tmp_path}",
              "data.synth_samples=64")
    assert out.returncode == 2
    assert "inputs.teacher" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_stage_in_the_foreground_logs_to_mlflow_and_continues_its_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("--stage", "clip", "--rung", "B16", "--out", str(tmp_path / "clip"), "--mlflow", "--quiet",
            f"tracking.uri={uri}", f"data.cache_dir={tmp_path / 'synth'}", "data.synth_samples=128",
            "train.batch_size=16", "train.samples=32", "train.log_every=1", "eval.max_samples=16")
    out = cli(*args, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = stage_run_id(tmp_path / "clip")  # the stage folder's state file remembers its run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["rung"] == "B16"
    assert (run.data.tags["stage"], run.data.tags["kind"]) == ("clip@B16", "clip")  # as the ladder tags it
    import torch

    # the kernels that ran: CPU runs on another instruction set take another trajectory
    assert run.data.tags["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert run.data.tags["torch_version"] == torch.__version__
    assert run.data.params["optim.name"] == "lamb"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert "eval/synth_cls/top1" in run.data.metrics
