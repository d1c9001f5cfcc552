"""Lineage in the ladder file: each rung's MIM teacher and CLIP text init, the from-scratch text
lr when a text tower has nothing to start from, and the phases in the dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scaling.config import RECIPES_DIR, ConfigError
from scaling.ladder.cli import main
from scaling.ladder.plan import plan_ladder
from scaling.ladder.spec import load_ladder


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def test_the_ladder_file_names_the_papers_teachers_and_text_inits():
    spec = load_ladder()
    teachers = {r.key: r.teacher for r in spec.rungs}
    # EVA-02 §2.2: every EVA-02 learns from EVA-01-CLIP-g/14; EVA-CLIP-18B §3: 8B/18B from E/14+
    assert teachers == {"g14": None, "B16": "g14", "L14": "g14", "E14": "g14", "8B": "E14", "18B": "E14"}
    text = {r.key: r.text_init_kind(spec.keys()) for r in spec.rungs}
    assert text == {"g14": "scratch", "B16": "scratch", "L14": "scratch", "E14": "scratch",
                    "8B": "teacher", "18B": "teacher"}


def test_a_text_tower_from_scratch_gets_the_from_scratch_lr_and_the_plan_says_so(runs):
    plan = plan_ladder("B16", "L14", proxy=False, runs_dir=runs, allow_missing_teacher=True)
    clip = plan.stage("clip@L14")
    assert clip.cfg.inputs.init_text is None and clip.init["text"] == "scratch"
    assert clip.cfg.optim.text_lr == 4.0e-4 and clip.cfg.optim.text_layer_decay == 1.0  # not 4e-5 / 0.75
    assert clip.cfg.optim.lr == 4.0e-4 and clip.cfg.optim.layer_decay == 0.85  # the vision tower's stay
    assert any("clip@L14: text tower trained from scratch" in n and "text lr 0.0004" in n for n in plan.notes)
    # --from B16 teaches L14 as asked; the plan says the papers' teacher is g14
    assert plan.stage("mim@L14").teacher_rung == "B16"
    assert any("ladder file names g14" in n for n in plan.notes)
    # a stage-targeted override still wins over the from-scratch layer
    plan = plan_ladder("B16", "L14", proxy=False, runs_dir=runs, allow_missing_teacher=True,
                       overrides=["clip@L14.optim.text_lr=1e-4"])
    assert plan.stage("clip@L14").cfg.optim.text_lr == 1e-4


def test_a_text_init_checkpoint_replaces_scratch(runs, tmp_path):
    ckpt = tmp_path / "openai-clip-l14.pt"
    ckpt.write_bytes(b"")
    plan = plan_ladder("B16", "L14", proxy=False, runs_dir=runs, allow_missing_teacher=True,
                       overrides=[f"ladder.rungs.L14.text_init={ckpt}"])
    clip = plan.stage("clip@L14")
    assert clip.cfg.inputs.init_text == str(ckpt.resolve())
    assert clip.cfg.optim.text_lr == 4.0e-5 and clip.cfg.optim.text_layer_decay == 0.75  # EVA-02 Table 26
    assert not any("clip@L14: text tower trained from scratch" in n for n in plan.notes)
    with pytest.raises(ConfigError, match=r"rungs\.L14\.text_init.*does not exist"):
        plan_ladder("B16", "L14", proxy=False, runs_dir=runs, allow_missing_teacher=True,
                    overrides=[f"ladder.rungs.L14.text_init={tmp_path / 'nope.pt'}"])
    with pytest.raises(ConfigError, match=r"rungs\.L14\.text_init.*neither"):
        plan_ladder("B16", "L14", runs_dir=runs, overrides=["ladder.rungs.L14.text_init=B61"])


def test_the_papers_lineage_as_a_path(runs):
    plan = plan_ladder("g14", "L14", runs_dir=runs)  # proxy: bootstraps the g14 CLIP
    assert plan.path == ["g14", "L14"] and [s.name for s in plan.stages] == ["clip@g14", "mim@L14", "clip@L14"]
    assert plan.stage("mim@L14").teacher == "clip@g14"
    assert not any("ladder file names" in n for n in plan.notes)
    plan = plan_ladder("E14", "18B", runs_dir=runs)
    clip = plan.stage("clip@18B")
    recipe = OmegaConf.load(RECIPES_DIR / "proxy" / "clip.yaml").optim.text_lr
    assert clip.init["text"] == "clip@E14" and clip.cfg.optim.text_lr == recipe  # the proxy recipe's


def test_dry_run_shows_the_phases(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--from", "E14", "--to", "18B", "--no-proxy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "clip@18B phases: patch-dropout 5.4B samples (batch 108k, patch dropout 0.5) -> " \
           "full-patches 600M samples (batch 108k, patch dropout 0)" in out
