"""Phases of a stage: the loop moves to the next phase at its sample boundary (batch layout,
patch dropout, data stream), the lr schedule runs over the total, and a stage stopped or killed
at a phase boundary resumes to bitwise the same weights and losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scaling.config import ConfigError, load_stage_config, stage_phases
from scaling.metrics import JsonlLogger
from scaling.paths import REPO_ROOT
from scaling.train import checkpoint as ckpt
from scaling.train import run_stage

# 96 samples at batch 16 with 50 % patch dropout (6 steps), then 64 at batch 8 without (8 steps)
PHASES = "phases=[{name: drop, samples: 96}, {name: full, batch_size: 8, patch_dropout: 0.0}]"
COMMON = ["data.synth_samples=256", "data.shuffle_buffer=32", "train.batch_size=16", "train.samples=160",
          "train.log_every=1", "eval.max_samples=16", "eval.every_samples=0", "optim.warmup_samples=32",
          "model.patch_dropout=0.5", "model.drop_path=0.1", PHASES]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def stage_cfg(out, synth, *extra):
    return load_stage_config("clip", "B16", proxy=True, overrides=[
        f"out_dir={out}", f"data.cache_dir={synth}", *COMMON, *extra])


def losses(rows):
    """step -> loss; a resumed run's later rows replace the rows it repeats."""
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_phases_resolve_from_samples_fractions_and_the_rest(tmp_path):
    cfg = stage_cfg(tmp_path, tmp_path)
    assert [(p.name, p.samples, p.batch_size, p.patch_dropout, p.steps) for p in stage_phases(cfg)] == [
        ("drop", 96, 16, 0.5, 6), ("full", 64, 8, 0.0, 8)]
    cfg = stage_cfg(tmp_path, tmp_path, "phases=[{fraction: 0.25}, {}]")
    assert [p.samples for p in stage_phases(cfg)] == [40, 120]
    with pytest.raises(ConfigError, match=r"phases.*add up to 'train.samples' \(160\)"):
        stage_cfg(tmp_path, tmp_path, "phases=[{samples: 100}, {samples: 100}]")
    with pytest.raises(ConfigError, match=r"phases\[0\].*both 'samples' and 'fraction'"):
        stage_cfg(tmp_path, tmp_path, "phases=[{samples: 100, fraction: 0.5}, {}]")
    with pytest.raises(ConfigError, match="at most one phase"):
        stage_cfg(tmp_path, tmp_path, "phases=[{}, {}]")
    with pytest.raises(ConfigError, match=r"phases\[1\].micro_batch"):
        stage_cfg(tmp_path, tmp_path, "phases=[{samples: 96}, {batch_size: 8, micro_batch: 3}]")
    with pytest.raises(ConfigError, match="unknown config key 'smaples'"):
        stage_cfg(tmp_path, tmp_path, "phases=[{smaples: 96}, {}]")


@pytest.fixture(scope="module")
def whole(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    logger = JsonlLogger(out / "metrics.jsonl")
    result = run_stage(stage_cfg(out, synth), logger)
    return out, result, logger.read()


def test_the_loop_moves_to_the_next_phase_at_its_boundary(whole):
    out, result, rows = whole
    assert result.status == "finished" and result.steps == 14 and result.samples_seen == 96 + 64
    train = [r for r in rows if "train/loss" in r]
    assert [r["train/phase"] for r in train] == [0] * 6 + [1] * 8
    assert [r["train/samples_seen"] for r in train][5:8] == [96, 104, 112]  # batch 16, then 8
    lrs = [r["train/lr/vision"] for r in train]
    # one schedule over both phases: warm-up (2 steps of 16), then a single cosine to the end
    assert lrs[1] == max(lrs) and all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] < 0.05 * max(lrs)
    assert json.loads((out / "final" / ckpt.MANIFEST).read_text())["phase"] == 1


def test_patch_dropout_follows_the_phase(synth, tmp_path):
    from scaling.train.loop import set_patch_dropout
    from scaling.train.stage_models import build_stage_model

    model, _, _ = build_stage_model(stage_cfg(tmp_path, synth), torch.device("cpu"))
    assert model.visual.trunk.patch_drop.prob == 0.5
    set_patch_dropout(model, 0.0)
    assert model.visual.trunk.patch_drop is None
    set_patch_dropout(model, 0.25)
    assert model.visual.trunk.patch_drop.prob == 0.25


@pytest.mark.parametrize("stop_after", [6, 7])  # at the boundary, and the first step after it
def test_stop_at_the_phase_boundary_then_resume_is_bitwise_equal(whole, synth, tmp_path, stop_after):
    out = tmp_path / "parts"
    calls = iter(range(100))
    stop = lambda: next(calls) >= stop_after  # noqa: E731  (polled before each step)
    logger = JsonlLogger(tmp_path / "parts.jsonl")
    # a checkpoint every step: stopped at step 6, the stage keeps the one saved at the end of the
    # first phase (its stream is the first phase's)
    first = run_stage(stage_cfg(out, synth, "train.ckpt_every=1"), logger, stop_requested=stop)
    assert first.status == "preempted" and first.steps == stop_after
    assert json.loads((out / "checkpoints" / "step_6" / ckpt.MANIFEST).read_text())["phase"] == 0
    second = run_stage(stage_cfg(out, synth, "train.ckpt_every=1"), logger)
    assert second.status == "finished" and second.samples_seen == 160
    assert losses(logger.read()) == losses(whole[2])
    a, b = [torch.load(d / "final" / ckpt.MODEL_FILE, weights_only=True) for d in (whole[0], out)]
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def command(out, synth, metrics):
    return [sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(out),
            "--quiet", "--metrics", str(metrics), f"data.cache_dir={synth}", *COMMON, "train.ckpt_every=1",
            "train.keep_checkpoints=20"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.mark.slow
def test_kill_9_at_the_phase_boundary_then_resume_is_bitwise_equal(whole, synth, tmp_path):
    out, metrics = tmp_path / "killed", tmp_path / "killed.jsonl"
    proc = subprocess.Popen(command(out, synth, metrics), env=env(), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    boundary = out / "checkpoints" / "step_6"  # the last step of the first phase
    while not ckpt.is_complete(boundary) and proc.poll() is None:
        assert time.time() < deadline, "the stage never reached the phase boundary"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before the kill"
    resumed_from = ckpt.latest_checkpoint(out)
    assert resumed_from is not None and 6 <= int(resumed_from.name.split("_")[1]) < 14

    again = subprocess.run(command(out, synth, metrics), env=env(), cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    assert losses(rows) == losses(whole[2]), f"resumed from {resumed_from.name}"
    a = torch.load(whole[0] / "final" / ckpt.MODEL_FILE, weights_only=True)
    b = torch.load(out / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert not [k for k in a if not torch.equal(a[k], b[k])], f"resumed from {resumed_from.name}"


def test_a_phase_that_changes_the_image_size_is_refused_naming_it(synth, tmp_path):
    from scaling.train.errors import StageConfigError

    cfg = stage_cfg(tmp_path, synth, "phases=[{samples: 96}, {image_size: 48}]")
    with pytest.raises(StageConfigError, match=r"phases\[1\]\.image_size=48.*its own clip stage"):
        run_stage(cfg)
