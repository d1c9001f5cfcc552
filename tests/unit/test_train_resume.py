"""kill -9 a stage at a random step, run it again: the final weights are bitwise those of an
uninterrupted run (CPU, fixed seed, one thread)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from scaling.paths import REPO_ROOT
from scaling.train import checkpoint as ckpt


def command(out, synth):
    return [sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(out),
            "--quiet", f"data.cache_dir={synth}", "data.synth_samples=256", "data.shuffle_buffer=32",
            "train.batch_size=16", "train.samples=160", "train.ckpt_every=1", "train.keep_checkpoints=2",
            "eval.max_samples=16", "optim.warmup_samples=32", "model.patch_dropout=0.5", "model.drop_path=0.1"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.mark.slow
def test_kill_9_and_resume_gives_bitwise_equal_weights(tmp_path):
    synth = tmp_path / "synth"
    whole = subprocess.run(command(tmp_path / "whole", synth), env=env(), cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]

    kill_after = random.Random(time.time_ns()).randint(2, 7)  # a checkpoint step, then SIGKILL mid-way
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out, synth), env=env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoints" / f"step_{kill_after}").exists() and proc.poll() is None:
        assert time.time() < deadline, "the stage never reached the step to kill at"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the stage ended before the kill (step {kill_after})"
    assert not (out / "final").exists()
    resumed_from = ckpt.latest_checkpoint(out)
    assert resumed_from is not None

    again = subprocess.run(command(out, synth), env=env(), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr
    a = torch.load(tmp_path / "whole" / "final" / ckpt.MODEL_FILE, weights_only=True)
    b = torch.load(out / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"killed after step {kill_after}, resumed from {resumed_from.name}: {different[:5]}"
