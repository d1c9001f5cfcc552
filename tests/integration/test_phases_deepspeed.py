"""Phases under the distributed engines. A DeepSpeed stage whose phases change the gradient
accumulation (batch 16 in one micro-batch, then 8 in two of 4): killed with SIGKILL just after the
phase boundary and run again, it ends bitwise where the uninterrupted run does (CPU, one process,
ZeRO-1, LAMB). Two DDP processes whose second phase moves to 48 px (a new position table in the
optimizer and in DDP's buckets) do the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scaling.paths import REPO_ROOT
from scaling.train import checkpoint as ckpt
from tests.services.mlflow_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def command(root, name):
    return [sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(root / name),
            "--quiet", "--metrics", str(root / f"{name}.jsonl"), "distributed.deepspeed=true",
            "distributed.zero_stage=1", "optim.name=lamb", f"data.cache_dir={root / 'synth'}",
            "data.synth_samples=256", "data.shuffle_buffer=32", "train.batch_size=16", "train.samples=96",
            "train.log_every=1", "eval.max_samples=16", "train.ckpt_every=1", "train.keep_checkpoints=20",
            "phases=[{samples: 48}, {batch_size: 8, micro_batch: 4, patch_dropout: 0.0}]"]


def env():
    return {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def losses(path):
    return {r["step"]: r["train/loss"] for r in map(json.loads, path.read_text().splitlines()) if "train/loss" in r}


def test_deepspeed_phases_resume_across_an_accumulation_change(tmp_path):
    whole = subprocess.run(command(tmp_path, "a"), env=env(), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=400)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = subprocess.Popen(command(tmp_path, "b"), env=env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    after_boundary = tmp_path / "b" / "checkpoints" / "step_4"  # the first step of the second phase
    deadline = time.time() + 300
    while not ckpt.is_complete(after_boundary) and proc.poll() is None:
        assert time.time() < deadline, "the stage never reached the second phase"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before the kill"
    again = subprocess.run(command(tmp_path, "b"), env=env(), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert losses(tmp_path / "b.jsonl") == losses(tmp_path / "a.jsonl")
    a, b = [torch.load(tmp_path / n / "final" / ckpt.MODEL_FILE, weights_only=True) for n in ("a", "b")]
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def ddp_command(root, name):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(root / name), "--quiet",
            "--metrics", str(root / f"{name}.jsonl"), "optim.name=lamb", f"data.cache_dir={root / 'synth'}",
            "data.synth_samples=256", "data.shuffle_buffer=32", "train.batch_size=16", "train.samples=96",
            "train.log_every=1", "eval.max_samples=16", "train.ckpt_every=1", "train.keep_checkpoints=20",
            "model.patch_dropout=0.5", "phases=[{samples: 48}, {batch_size: 8, patch_dropout: 0.0, image_size: 48}]"]


def test_ddp_phases_resume_across_an_image_size_change(tmp_path):
    plain = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(ddp_command(tmp_path, "a"), env=plain, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=400)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # the launcher and its two workers in one process group: SIGKILL reaches all three
    proc = subprocess.Popen(ddp_command(tmp_path, "b"), env=plain, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    after_boundary = tmp_path / "b" / "checkpoints" / "step_4"  # the first step at 48 px
    deadline = time.time() + 300
    while not ckpt.is_complete(after_boundary) and proc.poll() is None:
        assert time.time() < deadline, "the stage never reached the second phase"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before the kill"
    again = subprocess.run(ddp_command(tmp_path, "b"), env=plain, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert losses(tmp_path / "b.jsonl") == losses(tmp_path / "a.jsonl")
    a, b = [torch.load(tmp_path / n / "final" / ckpt.MODEL_FILE, weights_only=True) for n in ("a", "b")]
    assert a["visual.trunk.pos_embed"].shape == (1, 145, 64)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
