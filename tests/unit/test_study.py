"""``python -m scaling.study``: the plan of arms and seeds (fast), and the command end to end on a
tiny budget (slow: real subprocess stages, a real SQLite MLflow store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scaling import costs
from scaling.config import ConfigError
from scaling.ladder.estimate import stage_estimate
from scaling.ladder.plan import plan_ladder
from scaling.ladder.spec import load_ladder
from scaling.models.registry import get_rung
from scaling.study.arms import plan_study

REPO = Path(__file__).resolve().parents[2]


def _plan(tmp_path: Path, *overrides: str):
    return plan_ladder("E14", "18B", runs_dir=tmp_path / "runs", overrides=list(overrides))


def test_study_adds_seeds_and_controls_to_each_mim_initialised_clip_stage(tmp_path: Path) -> None:
    ladder = _plan(tmp_path)
    study = plan_study(ladder, seeds=3)
    names = [s.name for s in study.plan.stages]
    assert names[:3] == ["clip@E14", "mim@18B", "clip@18B"]  # the ladder first, in its order
    assert study.compared == ["clip@18B"]
    by = {s.name: s for s in study.plan.stages}
    base = by["clip@18B"]
    own = int(base.cfg.train.samples)
    assert {k: v for k, v in base.tags.items() if k != "inherited_flops"} == {
        "arm": "mim_init", "seed": "0", "base_stage": "clip@18B", "budget": str(own), "upstream_seed": "0"}
    # no arms to compare there: the bootstrap teacher is its own arm, the MIM stage has none
    assert by["clip@E14"].tags["arm"] == "bootstrap" and "arm" not in by["mim@18B"].tags
    assert base.init.get("text") == "clip@E14"  # 18B's text tower starts from its teacher's: a scratch arm
    expected = {f"clip@18B.mim_init.s{k}" for k in (1, 2)}
    expected |= {f"clip@18B.{arm}.s{k}" for k in range(3) for arm in ("random_init", "random_init_compute", "scratch")}
    assert set(names[3:]) == expected
    for name in expected:
        stage = by[name]
        arm, seed = stage.tags["arm"], int(stage.tags["seed"])
        assert stage.tags["base_stage"] == "clip@18B" and stage.name == name and stage.tags["budget"] == str(own)
        if arm != "random_init_compute":
            assert stage.cfg.train.samples == own  # equal CLIP samples
        assert stage.cfg.train.seed == seed  # the tag is the absolute seed
        if arm == "mim_init":
            assert stage.cfg.inputs.init_vision == base.cfg.inputs.init_vision and "mim@18B" in stage.depends_on
        else:
            assert stage.cfg.inputs.init_vision is None and "mim@18B" not in stage.depends_on
        if arm == "scratch":
            assert stage.cfg.inputs.init_text is None and stage.depends_on == [] and stage.tags["upstream_seed"] == ""
        else:
            assert stage.cfg.inputs.init_text == base.cfg.inputs.init_text and stage.tags["upstream_seed"] == "0"
        assert stage.out_dir.name == f"{name}-{stage.fingerprint}" and stage.cfg.out_dir == stage.out_dir.as_posix()
        # every dependency comes earlier in the plan (the local executor runs them in order)
        assert all(names.index(d) < names.index(name) for d in stage.depends_on)
    fps = [s.fingerprint for s in study.plan.stages]
    assert len(set(fps)) == len(fps)
    again = plan_study(_plan(tmp_path), seeds=3)
    assert [s.fingerprint for s in again.plan.stages] == fps  # a rerun finds what finished
    # the ladder's own stages keep the ladder's fingerprints: a ladder run earlier is reused
    assert fps[:3] == [s.fingerprint for s in _plan(tmp_path).stages]
    changed = plan_study(_plan(tmp_path, "clip@18B.train.samples=999"), seeds=3, arms=["mim_init", "random_init"])
    assert all(s.cfg.train.samples == 999 for s in changed.plan.stages if s.name.startswith("clip@18B"))


def test_compute_matched_control_costs_what_clip_and_mim_cost(tmp_path: Path) -> None:
    for match_teacher in (False, True):
        study = plan_study(_plan(tmp_path), seeds=1, arms=["mim_init", "random_init_compute"],
                           match_teacher=match_teacher)
        by = {s.name: s for s in study.plan.stages}
        flops = {n: stage_estimate(s)["train_flops"] for n, s in by.items()}
        target = flops["clip@18B"] + flops["mim@18B"] + (flops["clip@E14"] if match_teacher else 0.0)
        matched = by["clip@18B.random_init_compute.s0"]
        per_sample = flops["clip@18B"] / by["clip@18B"].cfg.train.samples
        assert matched.cfg.train.samples > by["clip@18B"].cfg.train.samples
        assert abs(flops[matched.name] - target) <= per_sample  # equal to within one sample
        assert float(matched.tags["inherited_flops"]) == pytest.approx(flops["clip@E14"], rel=1e-5)
        assert float(by["clip@18B"].tags["inherited_flops"]) == pytest.approx(flops["clip@E14"] + flops["mim@18B"],
                                                                             rel=1e-5)


def test_no_scratch_arm_where_the_text_tower_starts_from_scratch(tmp_path: Path) -> None:
    study = plan_study(plan_ladder("L14", "E14", runs_dir=tmp_path / "runs"), seeds=2)
    arms = {s.tags.get("arm") for s in study.plan.stages}
    assert "scratch" not in arms and {"mim_init", "random_init", "random_init_compute"} <= arms
    assert any("random_init is its scratch arm" in n for n in study.notes)
    fps = [s.fingerprint for s in study.plan.stages]
    assert len(set(fps)) == len(fps)  # no two stages train the same thing


def test_seed_tags_are_absolute(tmp_path: Path) -> None:
    study = plan_study(_plan(tmp_path, "train.seed=3"), seeds=3, arms=["mim_init", "random_init"])
    clip = [s for s in study.plan.stages if s.tags.get("base_stage") == "clip@18B"]
    assert sorted({s.tags["seed"] for s in clip}) == ["3", "4", "5"]
    assert all(int(s.tags["seed"]) == s.cfg.train.seed for s in clip)


def test_reseeded_upstream_gives_each_seed_its_own_chain_at_each_budget(tmp_path: Path) -> None:
    study = plan_study(_plan(tmp_path), seeds=3, arms=["mim_init", "random_init"], budgets=[2000, 4000, 8000],
                       reseed_upstream=True)
    by = {s.name: s for s in study.plan.stages}
    for k in (1, 2):
        teacher, mim = by[f"clip@E14.s{k}"], by[f"mim@18B.s{k}"]
        assert teacher.cfg.train.seed == k and teacher.tags["arm"] == "bootstrap"
        assert mim.depends_on == [f"clip@E14.s{k}"] and mim.cfg.inputs.teacher == teacher.out_dir.as_posix()
    assert len({by[n].fingerprint for n in ("clip@E14", "clip@E14.s1", "clip@E14.s2")}) == 3
    arms = [s for s in study.plan.stages if s.tags.get("base_stage") == "clip@18B" and s.kind == "clip"]
    # 3 budgets x 2 arms x 3 seeds, the ladder's own 4000-sample stage and its chain copies among them
    assert len(arms) == 18
    for s in arms:
        seed = int(s.tags["seed"])
        assert s.tags["upstream_seed"] == str(seed)
        if seed:
            assert all(d.endswith(f".s{seed}") for d in s.depends_on)
        else:
            assert set(s.depends_on) <= {"mim@18B", "clip@E14"}
        assert s.cfg.train.samples == int(s.tags["budget"])
        base = by["clip@18B"]
        fraction = base.cfg.optim.warmup_samples / base.cfg.train.samples
        assert s.cfg.optim.warmup_samples == round(fraction * int(s.tags["budget"]))  # the warm-up fraction kept
    assert {s.tags["budget"] for s in arms} == {"2000", "4000", "8000"}
    # the chain's own stage is an arm too, at the ladder's budget
    assert by["clip@18B.mim_init.s1"].tags["budget"] == str(by["clip@18B"].cfg.train.samples)
    with pytest.raises(ConfigError, match="--budgets"):
        plan_study(_plan(tmp_path), budgets=[0])


def test_study_refuses_what_it_cannot_compare(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--arms"):
        plan_study(_plan(tmp_path), arms=["random_init", "scratch"])
    assert plan_study(_plan(tmp_path), seeds=2, arms=["mim_init"]).compared == ["clip@18B"]  # seeds for the law
    with pytest.raises(ConfigError, match="--arms"):
        plan_study(_plan(tmp_path), arms=["mim_init", "typo"])
    with pytest.raises(ConfigError, match="--seeds 0"):
        plan_study(_plan(tmp_path), seeds=0)


def _study(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "scaling.study", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_and_dry_run_explain_the_arms(tmp_path: Path) -> None:
    out = _study(tmp_path, "--help", timeout=60)
    assert out.returncode == 0 and "random_init" in out.stdout and "--seeds" in out.stdout
    dry = _study(tmp_path, "--from", "E14", "--to", "18B", "--seeds", "2", "--dry-run", timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "clip@18B.random_init.s1" in dry.stdout and "CLIP samples in all" in dry.stdout
    bad = _study(tmp_path, "--from", "E14", "--to", "18B", "--arms", "random_init", "--dry-run", timeout=60)
    assert bad.returncode == 2 and "--arms" in bad.stderr and "Traceback" not in bad.stderr


TINY = ["train.samples=192", "train.batch_size=32", "eval.every_samples=0", "eval.max_samples=64",
        "data.synth_samples=512"]


@pytest.mark.slow
def test_study_end_to_end_on_a_tiny_budget(tmp_path: Path) -> None:
    from scaling.analysis.load import runs_frame
    from scaling.analysis.report_ladder import running_seconds

    args = ["--from", "E14", "--to", "18B", "--seeds", "2", "--arms", "mim_init,random_init",
            "--executor", "local", "--parallel", "2", *TINY]
    first = _study(tmp_path, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "weak-to-strong gain in eval/synth_cls/top1 (mim_init - control" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("clip@18B at"))
    assert "vs random_init" in line and "paired t, 2 seeds" in line

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = runs_frame(uri, "ladder-eva")
    parent = runs[runs["is_parent"]]
    stages = runs[~runs["is_parent"]].set_index("label")
    assert len(parent) == 1 and parent["tags.role"].iloc[0] == "study"
    assert set(stages["parent_run_id"]) == {parent["run_id"].iloc[0]}  # siblings under one invocation
    assert set(stages.index) == {"clip@E14", "mim@18B", "clip@18B", "clip@18B.mim_init.s1",
                                 "clip@18B.random_init.s0", "clip@18B.random_init.s1"}
    clip = stages[stages.index.str.startswith("clip@18B")]
    assert sorted(clip["tags.arm"]) == ["mim_init", "mim_init", "random_init", "random_init"]
    assert set(clip["tags.base_stage"]) == {"clip@18B"} and set(clip["tags.seed"]) == {"0", "1"}
    assert (stages["status"] == "FINISHED").all()
    # a stage's time is its own: the wait for its upstream stages is not in it
    own, fallback = running_seconds(stages)
    assert not fallback and (own > 0).all()
    assert own["clip@18B.random_init.s1"] < 0.8 * stages.loc["clip@18B.random_init.s1", "duration_s"]
    # --parallel 2: the random_init arm needs only the teacher, so it runs beside mim@18B, never
    # before its upstream clip@E14 ends
    start = pd.to_numeric(stages["tags.stage_started_at"])
    end = pd.to_datetime(stages["end_time"], utc=True).map(lambda t: t.timestamp())
    assert start["clip@18B.random_init.s0"] >= end["clip@E14"] - 1
    assert start["clip@18B"] >= end["mim@18B"] - 1
    overlaps = [(a, b) for a in stages.index for b in stages.index
                if a < b and start[a] < end[b] - 1 and start[b] < end[a] - 1]
    assert overlaps, "no two stages ran at once under --parallel 2"

    report = (tmp_path / "reports" / "ladder-eva" / "report.md").read_text()
    assert "## Weak-to-strong: MIM initialisation against its controls" in report
    assert "| clip@18B |" in report
    assert "no law drawn" in report or "exponent [" in report

    again = _study(tmp_path, *args)
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout[-2000:]


def test_attribute_split_tells_colour_from_shape() -> None:
    from scaling.study.attributes import split_accuracy

    names = ["blue circle", "blue square", "red circle", "red square"]
    # right colour, wrong shape twice; both right once; wrong colour, right shape once
    acc = split_accuracy([1, 0, 2, 2], [0, 1, 2, 0], names)
    assert acc == {"top1": 0.25, "colour": 0.75, "shape": 0.5}
    with pytest.raises(ValueError, match="as many predictions"):
        split_accuracy([0], [0, 1], names)
    with pytest.raises(ValueError, match="<colour> <shape>"):
        split_accuracy([0], [0], ["circle"])


def test_study_ladder_budgets_follow_its_stated_rule() -> None:
    # experiments/ladders/study.yaml: CLIP samples = vision tower parameters / 60, rounded to 100
    spec = load_ladder("study")
    for rung in ("B16", "L14", "E14", "8B", "18B"):
        layer = spec.layers["proxy"][f"clip@{rung}"]
        rule = round(costs.params(get_rung(rung, proxy=True).vision) / 60, -2)
        assert layer["train"]["samples"] == rule, rung
        assert layer["optim"]["warmup_samples"] == round(0.15 * rule), rung


def test_results_legend_says_what_the_numbers_mean(tmp_path: Path) -> None:
    from scaling.ladder.legend import results_legend

    plan = _plan(tmp_path)
    rows = [{"stage": "clip@E14", "metrics": {"eval/synth_cls/top1": 0.154, "eval/synth_cls/top5": 0.50,
                                              "eval/synth_cls/loss": 3.0, "eval/synth_ret/loss": 4.0}},
            {"stage": "mim@18B", "metrics": {"eval/mim/loss": -0.9}},
            {"stage": "clip@18B", "metrics": {"eval/synth_cls/top1": 0.146, "eval/synth_cls/top5": 0.55,
                                              "eval/synth_cls/loss": 2.5, "eval/synth_ret/loss": 3.9}}]
    text = "\n".join(results_legend(plan, rows))
    assert "chance: 1/56 = 1.8 % top-1" in text and "8/56 = 14.3 %" in text
    assert "clip@E14 (teacher, trained from scratch): top-1 15.4 %" in text
    student = next(line for line in text.splitlines() if line.strip().startswith("clip@18B"))
    assert "student of clip@E14" in student and "top-1 14.6 % (teacher 15.4 %)" in student
    assert "retrieval InfoNCE 3.900 (teacher 4.000)" in student and "beats its teacher on 2 of 2" in student
