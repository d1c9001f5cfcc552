"""Phases of a stage: the loop moves to the next phase at its sample boundary (batch layout,
patch dropout, image size, data stream), the lr schedule runs over the total, and a stage stopped
or killed at a phase boundary resumes to bitwise the same weights and losses."""

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

# 96 samples at batch 16 with 50 % patch dropout at 32 px (6 steps), then 64 at batch 8 without, at
# 48 px (8 steps): the proxy's 8x8 patch grid becomes 12x12, as 224 -> 336 px does at patch 14
PHASES = "phases=[{name: drop, samples: 96}, {name: full, batch_size: 8, patch_dropout: 0.0, image_size: 48}]"
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
    assert [(p.name, p.samples, p.batch_size, p.patch_dropout, p.steps, p.image_size)
            for p in stage_phases(cfg)] == [("drop", 96, 16, 0.5, 6, None), ("full", 64, 8, 0.0, 8, 48)]
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
    manifest = json.loads((out / "final" / ckpt.MANIFEST).read_text())
    assert manifest["phase"] == 1 and manifest["image_size"] == 48  # the size its weights are at
    final = torch.load(out / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert final["visual.trunk.pos_embed"].shape == (1, 1 + 12 * 12, 64)
    # the samples/s x FLOPs per sample of the 48 px phase count its 144 patches, without dropout
    flops = [r["train/flops_per_s"] / r["train/samples_per_s"] for r in train]
    assert flops[-1] > 2.5 * flops[0]


def test_patch_dropout_follows_the_phase(synth, tmp_path):
    from scaling.train.kinds import build_stage_model
    from scaling.train.phases import set_patch_dropout

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
    boundary = json.loads((out / "checkpoints" / "step_6" / ckpt.MANIFEST).read_text())
    assert (boundary["phase"], boundary["image_size"]) == (0, 32)
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
@pytest.mark.parametrize("kill_at", [6, 7])  # the last step at 32 px, the first at 48 px
def test_kill_9_at_the_phase_boundary_then_resume_is_bitwise_equal(whole, synth, tmp_path, kill_at):
    out, metrics = tmp_path / "killed", tmp_path / "killed.jsonl"
    proc = subprocess.Popen(command(out, synth, metrics), env=env(), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    boundary = out / "checkpoints" / f"step_{kill_at}"
    while not ckpt.is_complete(boundary) and proc.poll() is None:
        assert time.time() < deadline, "the stage never reached the phase boundary"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before the kill"
    resumed_from = ckpt.latest_checkpoint(out)
    assert resumed_from is not None and kill_at <= int(resumed_from.name.split("_")[1]) < 14

    again = subprocess.run(command(out, synth, metrics), env=env(), cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    assert losses(rows) == losses(whole[2]), f"resumed from {resumed_from.name}"
    a = torch.load(whole[0] / "final" / ckpt.MODEL_FILE, weights_only=True)
    b = torch.load(out / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert not [k for k in a if not torch.equal(a[k], b[k])], f"resumed from {resumed_from.name}"


def test_the_tower_and_its_adam_moments_move_to_the_new_grid(synth, tmp_path):
    """timm's set_input_size resamples the position table and rebuilds RoPE for the new grid; the
    optimizer holds the new table, its first moment resampled like the weight and its second
    through the square root (non-negative)."""
    from timm.layers import resample_abs_pos_embed

    from scaling.train.kinds import build_stage_model
    from scaling.train.resize import set_tower_image_size

    model, _, _ = build_stage_model(stage_cfg(tmp_path, synth), torch.device("cpu"))
    model.visual.trunk.patch_drop = None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4, 32))
    image, text, scale = model(images, tokens)
    (image @ text.T * scale).logsumexp(-1).mean().backward()
    optimizer.step()
    old = model.visual.trunk.pos_embed
    old_state = {k: v.clone() for k, v in optimizer.state[old].items()}

    def resampled(t):
        return resample_abs_pos_embed(t, (12, 12), old_size=(8, 8), num_prefix_tokens=1)

    expected = resampled(old.detach())
    assert set_tower_image_size(model.visual, 48, optimizer)
    new = model.visual.trunk.pos_embed
    assert new.shape == (1, 145, 64) and torch.equal(new.detach(), expected)
    assert model.visual.spec.image_size == 48 and model.visual.trunk.rope.feat_shape == (12, 12)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert any(p is new for p in params) and not any(p is old for p in params) and old not in optimizer.state
    state = optimizer.state[new]
    assert torch.equal(state["exp_avg"], resampled(old_state["exp_avg"]))
    assert torch.equal(state["exp_avg_sq"], resampled(old_state["exp_avg_sq"].sqrt()).square())
    assert float(state["exp_avg_sq"].min()) >= 0 and torch.equal(state["step"], old_state["step"])
    image, text, scale = model(torch.randn(4, 3, 48, 48), tokens)  # runs at 48 px, and steps
    (image @ text.T * scale).logsumexp(-1).mean().backward()
    optimizer.step()
    assert not set_tower_image_size(model.visual, 48, optimizer)  # already there


def test_a_phase_size_that_cannot_run_is_refused_naming_it(synth, tmp_path):
    from scaling.train.errors import StageConfigError

    cfg = stage_cfg(tmp_path, synth, "phases=[{samples: 96}, {image_size: 50}]")
    with pytest.raises(StageConfigError, match=r"phases\[1\]\.image_size=50 is not a multiple of .*patch size \(4\)"):
        run_stage(cfg)
    # DeepSpeed's flat buffers cannot follow the position table's new shape
    cfg = stage_cfg(tmp_path / "ds", synth, "distributed.deepspeed=true")
    with pytest.raises(StageConfigError, match=r"phases\[1\]\.image_size=48: .*distributed\.deepspeed=false"):
        run_stage(cfg)


MIM = ["data.synth_samples=256", "data.shuffle_buffer=32", "train.batch_size=16", "train.samples=64",
       "train.log_every=1", "eval.max_samples=16", "eval.every_samples=0", "optim.warmup_samples=16",
       "train.ckpt_every=1", "phases=[{samples: 32}, {image_size: 48}]"]


def mim_cfg(out, synth, teacher):
    return load_stage_config("mim", "L14", proxy=True, overrides=[
        f"out_dir={out}", f"data.cache_dir={synth}", f"inputs.teacher={teacher}", *MIM])


def test_a_mim_stage_changes_its_grid_at_the_boundary_and_resumes_bitwise(whole, synth, tmp_path):
    """The masks follow the 12x12 grid, the teacher (saved at 48 px, fed 32 px in the first phase)
    is fed 48 px images, and a stop at the boundary resumes to the uninterrupted weights."""
    teacher = whole[0]
    a = JsonlLogger(tmp_path / "a.jsonl")
    done = run_stage(mim_cfg(tmp_path / "a", synth, teacher), a)
    assert done.status == "finished"
    weights = torch.load(tmp_path / "a" / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert weights["encoder.trunk.pos_embed"].shape == (1, 145, 64)
    assert json.loads((tmp_path / "a" / "final" / ckpt.MANIFEST).read_text())["image_size"] == 48
    calls = iter(range(100))
    b = JsonlLogger(tmp_path / "b.jsonl")
    first = run_stage(mim_cfg(tmp_path / "b", synth, teacher), b, stop_requested=lambda: next(calls) >= 2)
    assert first.status == "preempted" and first.steps == 2
    assert run_stage(mim_cfg(tmp_path / "b", synth, teacher), b).status == "finished"
    assert losses(b.read()) == losses(a.read())
    again = torch.load(tmp_path / "b" / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert not [k for k in weights if not torch.equal(weights[k], again[k])]


def test_the_plan_counts_each_phase_at_its_image_size(tmp_path):
    from scaling import costs
    from scaling.ladder import plan_ladder
    from scaling.ladder.estimate import plan_rows
    from scaling.models import apply_overrides, get_rung

    def rows(*overrides):
        plan = plan_ladder("B16", "L14", proxy=True, runs_dir=tmp_path, allow_missing_teacher=True,
                           overrides=["clip@B16.train.samples=160", "mim@L14.train.samples=160", *overrides])
        return {r["stage"]: r for r in plan_rows(plan)}

    phases = "phases=[{samples: 96}, {image_size: 48}]"
    plan = rows(f"clip@B16.{phases}", f"mim@L14.{phases}")
    b16 = get_rung("B16", proxy=True)
    at_48 = apply_overrides(b16, {"image_size": 48})
    assert plan["clip@B16"]["train_flops"] == pytest.approx(
        96 * costs.train_flops(b16, "clip", 1) + 64 * costs.train_flops(at_48, "clip", 1))
    l14 = get_rung("L14", proxy=True)
    teacher_48 = apply_overrides(b16, {"vision.image_size": 48})  # the teacher fed the student's grid
    assert plan["mim@L14"]["train_flops"] == pytest.approx(
        96 * costs.train_flops(l14, "mim", 1, mask_ratio=105 / 256, teacher=b16)
        + 64 * costs.train_flops(apply_overrides(l14, {"image_size": 48}), "mim", 1, mask_ratio=105 / 256,
                                 teacher=teacher_48))
    assert plan["clip@B16"]["train_flops"] > rows()["clip@B16"]["train_flops"]
    assert not plan["clip@B16"]["problems"]
    # under DeepSpeed the plan says that the stage would be refused, and what to change
    problems = rows(f"clip@B16.{phases}", "clip@B16.distributed.deepspeed=true")["clip@B16"]["problems"]
    assert any("clip@B16 phase 'phase1': image size 32 -> 48 needs distributed.deepspeed=false" in p
               for p in problems), problems


def test_a_stage_starts_from_a_checkpoint_of_another_image_size(whole, synth, tmp_path):
    """The papers' "+" runs as their own stage: a 32 px CLIP initialised from the 48 px one gets its
    position table resampled from the 12x12 grid; the L14+ recipe carries EVA-02 Table 26's L+ column."""
    from timm.layers import resample_abs_pos_embed

    from scaling.train.kinds import build_stage_model

    cfg = load_stage_config("clip", "B16", proxy=True, overrides=[
        f"out_dir={tmp_path}", f"data.cache_dir={synth}", f"inputs.init_vision={whole[0]}",
        f"inputs.init_text={whole[0]}"])
    model, _, _ = build_stage_model(cfg, torch.device("cpu"))
    saved = torch.load(whole[0] / "final" / ckpt.MODEL_FILE, weights_only=True)
    assert saved["visual.trunk.pos_embed"].shape[1] == 145
    expected = resample_abs_pos_embed(saved["visual.trunk.pos_embed"], (8, 8), num_prefix_tokens=1)
    assert torch.equal(model.visual.trunk.pos_embed.detach(), expected)
    assert torch.equal(model.visual.trunk.blocks[0].attn.proj.weight.detach(),
                       saved["visual.trunk.blocks.0.attn.proj.weight"])
    plus = load_stage_config("clip", "L14+", proxy=False)
    assert (plus.optim.lr, plus.optim.layer_decay, plus.optim.text_lr, plus.optim.text_layer_decay) == \
        (4e-4, 0.75, 4e-5, 0.65)
    assert (plus.train.samples, plus.train.batch_size) == (2_000_000_000, 61_440)
    from scaling.train.stage_models import stage_rung

    assert stage_rung(plus).vision.image_size == 336 and stage_rung(load_stage_config(
        "clip", "L14+", proxy=True)).vision.image_size == 32  # the proxy keeps its size


def test_a_first_phase_may_set_its_own_size(synth, tmp_path):
    cfg = stage_cfg(tmp_path, synth, "train.samples=32", "train.ckpt_every=1",
                    "phases=[{samples: 16, image_size: 48}, {}]")  # 48 px, then the rung's 32 px
    assert run_stage(cfg).status == "finished"
    first = json.loads((tmp_path / "checkpoints" / "step_1" / ckpt.MANIFEST).read_text())
    final = json.loads((tmp_path / "final" / ckpt.MANIFEST).read_text())
    assert (first["phase"], first["image_size"], final["phase"], final["image_size"]) == (0, 48, 1, 32)
    weights = torch.load(tmp_path / "checkpoints" / "step_1" / ckpt.MODEL_FILE, weights_only=True)
    assert weights["visual.trunk.pos_embed"].shape[1] == 145
