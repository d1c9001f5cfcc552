"""Ladder planning: paths, wiring, overrides, fingerprints, cost rows (no jobs, no MLflow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.config import ConfigError
from scaling.ladder import load_ladder, plan_ladder, rung_path
from scaling.ladder.estimate import plan_rows
from scaling.stage_state import write_state

REQUIRED = {"stage", "rung", "kind", "teacher", "init", "params", "train_flops", "gpu_hours", "depends_on",
            "gflops_per_sample", "samples", "nodes", "gpus_per_node", "micro_batch", "memory_per_gpu_gb",
            "wall_hours"}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def test_default_path_follows_the_ladder_files_teachers():
    spec = load_ladder()
    assert rung_path(spec, "E14", "18B") == ["E14", "18B"]
    assert rung_path(spec, "L14", "18B") == ["L14", "E14", "18B"]
    assert rung_path(spec, "E14", "18B", via=["8B"]) == ["E14", "8B", "18B"]
    # --from not on the teacher chain: the path starts there directly.
    assert rung_path(spec, "8B", "18B") == ["8B", "18B"]
    # full names and any case resolve to the ladder's keys
    assert rung_path(spec, "eva02-clip-e-14-plus", "18b") == ["E14", "18B"]


def test_proxy_plan_bootstraps_the_teacher_and_wires_inputs(runs):
    plan = plan_ladder("E14", "18B", proxy=True, runs_dir=runs)
    names = [s.name for s in plan.stages]
    assert names == ["clip@E14", "mim@18B", "clip@18B"] and plan.teacher_source == "bootstrap"
    boot, mim, clip = plan.stages
    assert boot.bootstrap and boot.cfg.inputs.teacher is None and boot.cfg.inputs.init_text is None
    # tagged as its own arm: a CLIP from scratch is kept off the law of MIM-initialised stages
    assert boot.tags == {"arm": "bootstrap"} and mim.tags == {} and clip.tags == {}
    assert mim.teacher == "clip@E14" and mim.cfg.stage.teacher_rung == "E14"
    assert mim.cfg.inputs.teacher == boot.out_dir.as_posix() and mim.depends_on == ["clip@E14"]
    assert clip.init == {"vision": "mim@18B", "text": "clip@E14"}
    assert clip.cfg.inputs.init_vision == mim.out_dir.as_posix()
    assert clip.cfg.inputs.init_text == boot.out_dir.as_posix()
    assert set(clip.depends_on) == {"mim@18B", "clip@E14"}
    for stage in plan.stages:
        assert stage.out_dir == runs.resolve() / "ladder-eva" / f"{stage.name}-{stage.fingerprint}"
        assert stage.cfg.out_dir == stage.out_dir.as_posix() and stage.cfg.stage.proxy
    assert plan.downstream("clip@E14") == ["mim@18B", "clip@18B"]


def test_real_plan_needs_a_teacher_checkpoint(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"missing teacher checkpoint.*ladder\.teacher_checkpoint"):
        plan_ladder("E14", "18B", proxy=False, runs_dir=runs)
    ckpt = tmp_path / "eva02_clip_e14plus"
    ckpt.mkdir()
    plan = plan_ladder("E14", "18B", proxy=False, runs_dir=runs,
                       overrides=[f"ladder.teacher_checkpoint={ckpt}"])
    assert [s.name for s in plan.stages] == ["mim@18B", "clip@18B"]
    assert plan.stages[0].cfg.inputs.teacher == str(ckpt.resolve()) and plan.stages[0].depends_on == []
    assert plan.stages[1].cfg.inputs.init_text == str(ckpt.resolve())
    with pytest.raises(ConfigError, match="does not exist"):
        plan_ladder("E14", "18B", proxy=False, runs_dir=runs, overrides=["ladder.teacher_checkpoint=/nope/x"])


def test_real_plan_keeps_the_papers_lamb_with_zero(runs, tmp_path):
    ckpt = tmp_path / "teacher"
    ckpt.mkdir()
    plan = plan_ladder("E14", "18B", proxy=False, runs_dir=runs, overrides=[f"ladder.teacher_checkpoint={ckpt}"])
    clip = plan.stages[1].cfg
    # Table 13: LAMB with ZeRO-3; the trust ratios stay per parameter (tests/integration/test_lamb_zero.py)
    assert (clip.optim.name, clip.distributed.deepspeed, clip.distributed.zero_stage) == ("lamb", True, 3)


def test_real_plan_uses_the_ladders_own_finished_teacher(runs):
    done = runs.resolve() / "ladder-eva" / "clip@E14-0123456789abcdef"
    write_state(done, "finished", proxy=False)
    plan = plan_ladder("E14", "18B", proxy=False, runs_dir=runs)
    assert plan.teacher_source == "ladder" and plan.stages[0].cfg.inputs.teacher == str(done)


def test_targeted_overrides(runs):
    plan = plan_ladder("E14", "18B", runs_dir=runs, overrides=[
        "train.samples=512", "mim.optim.lr=0.00123", "clip@18B.train.samples=256"])
    boot, mim, clip = plan.stages
    assert boot.cfg.train.samples == 512 and mim.cfg.train.samples == 512 and clip.cfg.train.samples == 256
    assert mim.cfg.optim.lr == 0.00123 and clip.cfg.optim.lr != 0.00123


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("train.samples=many", "train.samples"),
    ("clip@8B.train.samples=5", "targets no stage"),
    ("ladder.colour=red", "ladder.colour"),
    ("noequals", "key=value"),
])
def test_bad_overrides_name_the_key(runs, override, message):
    with pytest.raises(ConfigError, match=message) as info:
        plan_ladder("E14", "18B", runs_dir=runs, overrides=[override])
    assert "command line" in str(info.value)


def test_bad_ladder_file_names_key_and_file(tmp_path, runs):
    text = Path(load_ladder().path).read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  all: {}\n  mim: {}", "  all: {}\n  mim: {optim: {lrr: 1}}", 1))
    with pytest.raises(ConfigError, match=r"bad\.yaml: config\.mim.*optim\.lrr"):
        plan_ladder("E14", "18B", ladder=bad, runs_dir=runs)
    bad.write_text(text.replace("18B: {teacher: E14", "18B: {teacher: E15"))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*rungs\.18B\.teacher"):
        plan_ladder("E14", "18B", ladder=bad, runs_dir=runs)


def test_rung_errors(runs):
    with pytest.raises(ConfigError, match="unknown rung 'Z99'.*valid names"):
        plan_ladder("Z99", "18B", runs_dir=runs)
    with pytest.raises(ConfigError, match="must be below"):
        plan_ladder("18B", "E14", runs_dir=runs)
    with pytest.raises(ConfigError, match="--via"):
        plan_ladder("E14", "8B", via=["18B"], runs_dir=runs)
    assert not runs.exists()  # planning writes nothing


def test_fingerprint_change_propagates_downstream(runs):
    base = {s.name: s.fingerprint for s in plan_ladder("E14", "18B", runs_dir=runs).stages}
    again = {s.name: s.fingerprint for s in plan_ladder("E14", "18B", runs_dir=runs).stages}
    assert base == again
    changed = {s.name: s.fingerprint for s in plan_ladder("E14", "18B", runs_dir=runs,
                                                            overrides=["mim.optim.lr=0.002"]).stages}
    assert changed["clip@E14"] == base["clip@E14"]
    assert changed["mim@18B"] != base["mim@18B"] and changed["clip@18B"] != base["clip@18B"]
    # where a stage runs is not what it computes
    placed = {s.name: s.fingerprint for s in plan_ladder("E14", "18B", runs_dir=runs,
                                                           overrides=["resources.timeout_min=5"]).stages}
    assert placed == base


def test_dry_run_rows_at_real_sizes(runs, tmp_path):
    plan = plan_ladder("E14", "18B", proxy=False, runs_dir=runs, allow_missing_teacher=True)
    rows = plan_rows(plan)
    assert [r["stage"] for r in rows] == ["mim@18B", "clip@18B"]
    for row in rows:
        assert set(row) >= REQUIRED
        assert row["gpu_hours"] > 0
        assert row["train_flops"] == pytest.approx(row["gflops_per_sample"] * 1e9 * row["samples"])
        assert row["wall_hours"] == pytest.approx(row["gpu_hours"] / (row["nodes"] * row["gpus_per_node"]))
    mim, clip = rows
    assert mim["kind"] == "mim" and "ladder.teacher_checkpoint" in mim["teacher"]
    assert clip["init"]["vision"] == "mim@18B" and clip["depends_on"] == ["mim@18B"]
    assert 17e9 < clip["params"] < 19e9  # EVA-CLIP-18B: 17.5B vision + 0.7B text
    assert clip["nodes"] * clip["gpus_per_node"] == 360  # EVA-CLIP-18B: 360 A100s


def test_text_init_only_between_text_towers_of_one_shape(runs):
    # E14, 8B and 18B share one text tower shape (as the real models do): the teacher's initialises it
    plan = plan_ladder("E14", "18B", runs_dir=runs)
    assert plan.stage("clip@18B").cfg.inputs.init_text == plan.stage("clip@E14").out_dir.as_posix()
    # B16's text tower is smaller than L14's: clip@L14 trains its own, and the plan says so
    plan = plan_ladder("B16", "L14", runs_dir=runs)
    clip = plan.stage("clip@L14")
    assert clip.cfg.inputs.init_text is None and clip.depends_on == ["mim@L14"]
    assert any("clip@L14: text tower trained from scratch" in note for note in plan.notes)
    # ... unless the stages' own text shape is made one: the shape compared is the one they build
    # (the study ladder: one text depth for all its CLIP stages, and each from its teacher's)
    plan = plan_ladder("B16", "L14", ladder="study", runs_dir=runs)
    clip = plan.stage("clip@L14")
    assert clip.cfg.inputs.init_text == plan.stage("clip@B16").out_dir.as_posix()
    assert not any("clip@L14: text tower trained from scratch" in note for note in plan.notes)
    plan = plan_ladder("B16", "L14", ladder="study", runs_dir=runs, overrides=["clip@L14.model.text.depth=3"])
    assert plan.stage("clip@L14").cfg.inputs.init_text is None
    # and a student made to differ from its teacher trains its own
    plan = plan_ladder("E14", "18B", runs_dir=runs, overrides=["clip@18B.model.text.depth=2"])
    assert plan.stage("clip@18B").cfg.inputs.init_text is None


def test_a_stages_tower_overrides_change_what_the_plan_and_the_report_count(runs):
    import pandas as pd

    from scaling.analysis.load import _costs
    from scaling.ladder.estimate import stage_estimate

    base = stage_estimate(plan_ladder("E14", "18B", runs_dir=runs).stage("clip@18B"))
    deeper = plan_ladder("E14", "18B", runs_dir=runs, overrides=["clip@18B.model.text.depth=8"]).stage("clip@18B")
    more = stage_estimate(deeper)
    assert more["params"] > base["params"] and more["train_flops"] > base["train_flops"]
    # the report's cost model reads the same override back from the run's MLflow params
    row = {"rung": "18B", "kind": "clip", "proxy": "true", "params.train.samples": "4000",
           "params.model.patch_dropout": "0.5"}
    plain = _costs(pd.Series(row))
    logged = _costs(pd.Series({**row, "params.model.text.depth": "8"}))
    assert logged[2] == plain[2] == "cost model" and logged[1] > plain[1]


def test_progress_counts_towards_the_whole_batches_a_stage_trains(runs):
    from scaling.ladder.status import stage_rows

    plan = plan_ladder("E14", "18B", proxy=True, runs_dir=runs,
                       overrides=["train.samples=1000", "train.batch_size=48", "clip@18B.phases=[{samples: 500}, {}]"])
    boot, _, clip = plan.stages
    assert boot.samples == 1000 // 48 * 48  # 20 steps: 960, not the 1000 asked for
    assert clip.samples == 500 // 48 * 48 + 500 // 48 * 48  # each phase in whole batches
    write_state(boot.out_dir, "finished", samples_seen=960)
    row = next(r for r in stage_rows(plan) if r["stage"] == "clip@E14")
    assert (row["samples_seen"], row["samples"]) == (960, 960)
