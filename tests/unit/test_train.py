"""Stages end to end on the tiny B16/L14 proxies: metrics, checkpoints, resume, inputs, errors."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

from scaling.config import load_stage_config
from scaling.kinds import logged_metrics
from scaling.metrics import JsonlLogger
from scaling.train import checkpoint as ckpt
from scaling.train import run_stage
from scaling.train.errors import StageInputError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


def stage_cfg(kind, out, synth, *extra, rung=None):
    return load_stage_config(kind, rung or ("L14" if kind == "mim" else "B16"), proxy=True, overrides=[
        f"out_dir={out}", f"data.cache_dir={synth}", "data.synth_samples=256", "data.shuffle_buffer=32",
        "train.batch_size=16", "train.samples=64", "train.log_every=1", "train.ckpt_every=0",
        "eval.max_samples=32", "eval.every_samples=0", "optim.warmup_samples=16", *extra])


@pytest.fixture(scope="module")
def clip_stage(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    logger = JsonlLogger(out / "metrics.jsonl")
    result = run_stage(stage_cfg("clip", out, synth, "eval.every_samples=32"), logger)
    return out, result, logger.read()


def test_clip_stage_logs_every_metric_and_saves_final(clip_stage):
    out, result, rows = clip_stage
    assert result.status == "finished" and result.steps == 4 and result.samples_seen == 64
    assert result.checkpoint == str(out / "final") and ckpt.is_complete(out / "final")
    assert (out / "config.yaml").is_file()
    keys = set().union(*rows)
    for key in ("train/loss", "train/lr/vision", "train/lr/text", "train/grad_norm", "train/samples_seen",
                "train/samples_per_s", "train/flops_per_s", "train/mfu", "train/skipped_samples", "train/temperature",
                "eval/synth_cls/top1", "eval/synth_cls/top5", "eval/synth_ret/image_r1",
                "eval/synth_ret/image_r10", "eval/synth_ret/text_r5"):
        assert key in keys, key
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    # the names sweep objectives are checked against are the names the stage logs
    assert keys - {"step"} == set(logged_metrics(stage_cfg("clip", out, "unused")))
    assert [r["step"] for r in rows if "eval/synth_cls/top1" in r] == [2, 4]  # every 32 samples + end
    text_lr = [r["train/lr/text"] / r["train/lr/vision"] for r in rows if "train/loss" in r]
    cfg = stage_cfg("clip", out, "unused")
    assert text_lr[0] == pytest.approx(cfg.optim.text_lr / cfg.optim.lr)  # separate lr per tower
    assert 0 < result.metrics["train/mfu"] < 1


def test_finished_stage_returns_without_training(clip_stage):
    out, first, _ = clip_stage
    logger = JsonlLogger(out / "again.jsonl")
    again = run_stage(stage_cfg("clip", out, "unused"), logger)
    assert again.status == "finished" and again.steps == first.steps and logger.read() == []
    assert again.metrics["eval/synth_cls/top1"] == first.metrics["eval/synth_cls/top1"]


def final_weights(out):
    return torch.load(out / "final" / ckpt.MODEL_FILE, weights_only=True)


def test_preempt_then_resume_matches_an_uninterrupted_run(synth, tmp_path):
    extra = ("train.ckpt_every=1", "model.patch_dropout=0.5", "model.drop_path=0.1")
    whole = JsonlLogger(tmp_path / "a.jsonl")
    run_stage(stage_cfg("clip", tmp_path / "a", synth, *extra), whole)
    calls = iter(range(100))
    stop_at_two = lambda: next(calls) >= 2  # noqa: E731  (polled before each step)
    parts = JsonlLogger(tmp_path / "b.jsonl")
    cfg = stage_cfg("clip", tmp_path / "b", synth, *extra)
    first = run_stage(cfg, parts, stop_requested=stop_at_two)
    assert first.status == "preempted" and first.steps == 2
    assert first.checkpoint.endswith("step_2") and ckpt.latest_checkpoint(tmp_path / "b").name == "step_2"
    second = run_stage(cfg, parts)
    assert second.status == "finished" and second.steps == 4
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    loss = lambda rows: [r["train/loss"] for r in rows if "train/loss" in r]  # noqa: E731
    assert loss(whole.read()) == loss(parts.read())


@pytest.mark.slow
def test_compiled_stage_steps_as_the_eager_one(synth, tmp_path):
    extra = ("model.patch_dropout=0.0", "model.drop_path=0.0")  # no random ops: same numbers expected
    eager, compiled = JsonlLogger(tmp_path / "e.jsonl"), JsonlLogger(tmp_path / "c.jsonl")
    run_stage(stage_cfg("clip", tmp_path / "e", synth, *extra), eager)
    result = run_stage(stage_cfg("clip", tmp_path / "c", synth, *extra, "train.compile=true"), compiled)
    assert result.status == "finished"
    loss = lambda rows: [r["train/loss"] for r in rows if "train/loss" in r]  # noqa: E731
    assert loss(compiled.read()) == pytest.approx(loss(eager.read()), abs=1e-3)
    a, b = final_weights(tmp_path / "e"), final_weights(tmp_path / "c")
    assert a.keys() == b.keys()  # the eager module's names, not the compiled wrapper's
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_mim_stage_learns_from_a_clip_teacher_and_initialises_a_clip(clip_stage, synth, tmp_path):
    teacher_dir = clip_stage[0]
    logger = JsonlLogger(tmp_path / "mim.jsonl")
    # eval.every_samples unset: eval.points (4) evaluations, every ceil(96 / 4) = 24 samples + the end
    result = run_stage(stage_cfg("mim", tmp_path / "mim", synth, f"inputs.teacher={teacher_dir}",
                                 "train.samples=96", "optim.lr=3e-3", "eval.every_samples=null"), logger)
    losses = [r["train/loss"] for r in logger.read() if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.05, losses  # negative cosine similarity falls
    assert "eval/mim/loss" in result.metrics
    assert [r["step"] for r in logger.read() if "eval/mim/loss" in r] == [2, 3, 5, 6]  # 32, 48, 80, 96 samples
    assert set().union(*logger.read()) - {"step"} == set(logged_metrics(stage_cfg("mim", tmp_path / "mim", synth)))

    from scaling.train.kinds import build_stage_model

    cfg = stage_cfg("clip", tmp_path / "clip", synth, f"inputs.init_vision={tmp_path / 'mim'}", rung="L14")
    model, _, _ = build_stage_model(cfg, torch.device("cpu"))
    vis = model.visual.state_dict()
    mim = ckpt.load_model_state(tmp_path / "mim")
    assert all(torch.equal(vis[k[len("encoder."):]], v) for k, v in mim.items() if k.startswith("encoder."))

    model, _, _ = build_stage_model(stage_cfg("clip", tmp_path / "c2", synth, f"inputs.init_text={teacher_dir}"),
                                    torch.device("cpu"))
    txt = model.text.state_dict()
    teacher = ckpt.load_model_state(teacher_dir)
    assert all(torch.equal(txt[k[len("text."):]], v) for k, v in teacher.items() if k.startswith("text."))
    # the B16 proxy's text tower is shallower than L14's: refused, naming the key
    with pytest.raises(StageInputError, match="inputs.init_text.*lacks"):
        build_stage_model(stage_cfg("clip", tmp_path / "c3", synth, f"inputs.init_text={teacher_dir}",
                                    rung="L14"), torch.device("cpu"))


def test_fixed_temperature_stays_fixed(synth, tmp_path):
    result = run_stage(stage_cfg("clip", tmp_path, synth, "loss.temperature=0.01", "train.samples=32"))
    assert result.metrics["train/temperature"] == pytest.approx(0.01)


def test_stage_input_errors_name_the_key(synth, tmp_path):
    with pytest.raises(StageInputError, match="inputs.teacher"):
        run_stage(stage_cfg("mim", tmp_path / "a", synth))
    with pytest.raises(StageInputError, match=r"inputs.init_vision.*not found.*nowhere"):
        run_stage(stage_cfg("clip", tmp_path / "b", synth, f"inputs.init_vision={tmp_path / 'nowhere'}"))


def test_bad_samples_are_skipped_and_reported(synth, tmp_path, clip_stage):
    from scaling.data.synth_cache import ensure_synthetic

    paths = ensure_synthetic(synth, samples=256, image_size=32)
    good = paths["train"]
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for i, member in enumerate(m for m in src if m.isfile()):
            data = src.extractfile(member).read()
            if member.name.endswith(".png") and i % 15 == 0:
                data = b"not a png at all"
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    logger = JsonlLogger(tmp_path / "m.jsonl")
    result = run_stage(stage_cfg("clip", tmp_path / "out", synth, f"data.train={bad}",
                                 f"eval.classification={paths['classification']}"), logger)
    assert result.status == "finished"
    assert result.metrics["train/skipped_samples"] > 0
    assert "eval/classification/top1" in result.metrics  # a real folder: the metric takes its name


def test_teacher_with_another_patch_size_sees_a_resized_image(clip_stage, synth, tmp_path):
    from scaling.models.losses import teacher_targets
    from scaling.train.kinds import build_stage_model

    cfg = stage_cfg("mim", tmp_path, synth, f"inputs.teacher={clip_stage[0]}", "model.vision.patch_size=8")
    student, teacher, info = build_stage_model(cfg, torch.device("cpu"))
    assert info["teacher_image_size"] == 4 * 4  # student grid 32/8 = 4, teacher patch 4
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :6] = True
    targets = teacher_targets(teacher, images, info["teacher_image_size"])
    # the teacher's projected patch tokens: its embedding dim, not its width
    assert targets.shape == student(images, mask).shape == (2, 16, teacher.spec.embed_dim)


def test_gradient_accumulation_equals_the_full_batch(clip_stage, synth, tmp_path):
    curves, weights = {}, {}
    for name, extra in (("full", ()), ("accum", ("train.micro_batch=8",))):
        logger = JsonlLogger(tmp_path / f"{name}.jsonl")
        run_stage(stage_cfg("mim", tmp_path / name, synth, f"inputs.teacher={clip_stage[0]}",
                            "model.drop_path=0.0", "train.samples=48", *extra), logger)
        curves[name] = [r["train/loss"] for r in logger.read() if "train/loss" in r]
        weights[name] = final_weights(tmp_path / name)
    assert curves["accum"] == pytest.approx(curves["full"], abs=1e-5)
    for key, value in weights["full"].items():
        torch.testing.assert_close(weights["accum"][key], value, rtol=1e-4, atol=1e-5)


def test_a_stage_computes_with_the_cpus_it_was_given_unless_omp_says_otherwise():
    import torch
    from omegaconf import OmegaConf

    from scaling.train.stage import pin_cpu_threads

    before = torch.get_num_threads()
    try:
        cfg = OmegaConf.create({"resources": {"cpus_per_task": 3}})
        assert pin_cpu_threads(cfg, environ={}) == 3 and torch.get_num_threads() == 3
        assert pin_cpu_threads(cfg, environ={"OMP_NUM_THREADS": "1"}) is None  # the caller's choice wins
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
