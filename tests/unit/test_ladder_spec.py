"""Ladder files and scoped overrides load as typed configs: errors name the file (or the command
line) and the key, with close matches."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scaling.config import ConfigError
from scaling.ladder import load_ladder, plan_ladder
from scaling.ladder.overrides import split_overrides
from scaling.ladder.spec import DEFAULT_LADDER, LADDERS_DIR


def ladder_file(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_LADDER.read_text()
    assert old in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_shipped_ladders_load_as_written():
    spec = load_ladder()
    assert spec.keys() == ["g14", "B16", "L14", "E14", "8B", "18B"]
    assert spec.rungs[0].stages == ("clip",) and spec.rungs[1].stages == ("mim", "clip")
    assert spec.rung("18B").text_init == "teacher" and spec.rung("B16").text_init is None
    # the student's budget by the stated rule: the teacher's x the papers' ratio of samples seen (6B / 9B)
    assert spec.layers["proxy"]["clip@18B"] == {"train": {"samples": 8000}, "optim": {"warmup_samples": 1200}}
    proxy = spec.layers["proxy"]
    assert proxy["clip@18B"]["train"]["samples"] == proxy["clip@E14"]["train"]["samples"] * 6 // 9
    written = OmegaConf.to_container(OmegaConf.load(LADDERS_DIR / "eva.yaml").text_from_scratch.proxy)
    assert spec.text_from_scratch["proxy"] == written == {"optim": {"text_lr": written["optim"]["text_lr"]}}
    assert spec.law_metric == "eval/synth_cls/top1"  # the default when the file names none
    study = load_ladder("study")
    assert study.experiment == "ladder-study" and study.rung("18B").teacher == "8B"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("experiment: ladder-eva", "experimnt: ladder-eva",
     r"bad\.yaml: unknown config key 'experimnt'.*Did you mean: experiment"),
    ("18B: {teacher: E14,", "18B: {teachr: E14,",
     r"bad\.yaml: unknown config key 'rungs\.18B\.teachr'.*Did you mean: rungs\.18B\.teacher"),
    ("  clip@18B: {train: {samples: 8000}", "  clip@18B: {train: {sample: 8000}",
     r"bad\.yaml: proxy\.clip@18B: unknown config key 'train\.sample'.*Did you mean: train\.samples"),
    ("B16: {teacher: g14,", "B16: {stages: mim, teacher: g14,", r"bad\.yaml: 'rungs\.B16\.stages' has a bad value"),
    ("teacher_checkpoint: null", "law_metric: top1",
     r"bad\.yaml: 'law_metric' must name a CLIP stage's evaluation metric"),
    ("  clip@18B: {train", "  clip@18B: 3\n  x: {train", r"bad\.yaml: 'proxy\.clip@18B' has a bad value"),
    ("  clip@18B: {train", "  sft@18B: {train", r"bad\.yaml: 'proxy\.sft@18B' must be 'all', a stage kind"),
    ("  clip@18B: {train: {samples: 8000}", "  clip@18B: {train: {samples: lots}",
     r"bad\.yaml: proxy\.clip@18B: 'train\.samples' has a bad value"),
])
def test_bad_ladder_file_names_file_and_key(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_ladder(ladder_file(tmp_path, old, new))


WIRING = "  clip: {init_vision: mim, init_text: clip@text_init}"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  mim: {teacher: clip@teacher}", "  sft: {teacher: clip@teacher}",
     r"bad\.yaml: 'stages\.sft' is not a stage kind"),
    ("  mim: {teacher: clip@teacher}", "  mim: {init_text: clip@teacher}",
     r"bad\.yaml: 'stages\.mim\.init_text' is not an input of a mim stage \(it reads teacher\)"),
    ("  mim: {teacher: clip@teacher}", "  mim: {}", r"bad\.yaml: 'stages\.mim' a mim stage needs a teacher"),
    ("  mim: {teacher: clip@teacher}", "  mim: {teacher: clip}",
     r"'stages\.mim\.teacher' 'clip' must name a stage listed before this one \(none\)"),
    ("  mim: {teacher: clip@teacher}", "  mim: {teacher: clip@above}",
     r"'stages\.mim\.teacher' 'clip@above' must be <kind>"),
    (WIRING, "  clip: {init_vision: mim@teacher, init_text: clip@text_init}",
     r"'stages' take inputs from the stages clip, mim of other rungs"),
    ("g14: {teacher: null, stages: [clip]", "g14: {teacher: null, stages: [clip, sft]",
     r"'rungs\.g14\.stages' has stage kind\(s\) \['sft'\] that 'stages' does not wire; use mim, clip"),
])
def test_bad_stage_wiring_names_file_and_key(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_ladder(ladder_file(tmp_path, old, new))


def test_a_ladder_file_without_stage_wiring_says_what_to_write(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("rungs:\n  E14: {teacher: null}\n  18B: {teacher: E14}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: 'stages' must list what a rung trains .*e\.g\. stages: "):
        load_ladder(path)


def test_the_plan_wires_stages_as_the_file_says(tmp_path):
    spec = load_ladder()
    assert {k: {i: str(s) for i, s in w.inputs.items()} for k, w in spec.wiring.items()} == {
        "mim": {"teacher": "clip@teacher"}, "clip": {"init_vision": "mim", "init_text": "clip@text_init"}}
    # the same ladder with the CLIP's vision tower left out of its wiring: trained from scratch
    plan = plan_ladder("E14", "18B", ladder=ladder_file(tmp_path, WIRING, "  clip: {init_text: clip@text_init}"),
                       runs_dir=tmp_path / "runs")
    clip = plan.stage("clip@18B")
    assert clip.cfg.inputs.init_vision is None and clip.init == {"text": "clip@E14"}
    assert clip.depends_on == ["clip@E14"] and plan.downstream("mim@18B") == []


def test_ladder_overrides_merge_on_the_file():
    spec = load_ladder(None, ["teacher_checkpoint=/ckpt/e14", "rungs.L14.text_init=/ckpt/openai-l14.pt"])
    assert spec.teacher_checkpoint == "/ckpt/e14" and spec.rung("L14").text_init == "/ckpt/openai-l14.pt"
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'ladder\.teacher_checkpont'.*"
                                          r"Did you mean: ladder\.teacher_checkpoint"):
        load_ladder(None, ["teacher_checkpont=/x"])


@pytest.mark.parametrize(("item", "message"), [
    ("clip@18B.optim.lrr=1",
     r"command line: unknown config key 'clip@18B\.optim\.lrr'.*Did you mean: clip@18B\.optim\.lr"),
    ("mim.train.samples=many", r"command line: 'mim\.train\.samples' has a bad value"),
    ("optim.betaz=[0.9,0.9]", r"unknown config key 'optim\.betaz'.*Did you mean: optim\.betas"),
    ("sft@18B.optim.lr=1", r"'sft@18B\.optim\.lr=1': a stage override looks like clip@18B"),
    ("clip@18B=1", r"'clip@18B=1': a stage override looks like"),
    ("ladder=1", "names no ladder setting"),
    ("clip@18B.phases.0.fraction=1", r"cannot merge clip@18B\.phases.*set whole"),
])
def test_bad_scoped_override_names_it_as_typed(item, message):
    with pytest.raises(ConfigError, match=message):
        split_overrides([item])


def test_scoped_overrides_split_by_target():
    split = split_overrides(["optim.lr=1", "mim.optim.lr=2", "clip@18B.train.samples=3", "ladder.name=x",
                             "model.vision.norm=rmsnorm"])
    assert split.common == ["optim.lr=1", "model.vision.norm=rmsnorm"] and split.by_kind == {"mim": ["optim.lr=2"]}
    assert split.by_stage == {"clip@18B": ["train.samples=3"]} and split.ladder == ["name=x"]
    assert split.for_stage("clip", ["clip@18B"]) == [["optim.lr=1", "model.vision.norm=rmsnorm"], ["train.samples=3"]]


@pytest.mark.parametrize("item", ["resources.nodes=0", "clip@18B.resources.tasks_per_node=0",
                                  "resources.timeout_min=0", "mim.resources.cpus_per_task=0",
                                  "resources.gpus_per_node=-1"])
def test_plan_refuses_impossible_resources(tmp_path, item):
    key = "resources." + item.partition("resources.")[2].partition("=")[0]  # as the stage config names it
    with pytest.raises(ConfigError, match=rf"command line: '{key}' must be >"):
        plan_ladder("E14", "18B", runs_dir=tmp_path / "runs", overrides=[item])
    assert not (tmp_path / "runs").exists()
