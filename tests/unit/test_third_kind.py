"""A stage kind added without touching the loop, the planner or the report (``probe_kind``: a
linear probe on a frozen vision tower): trained through ``run_stage`` on the proxy's synthetic
world, its metrics logged, and planned after a CLIP stage by a ladder file that wires it."""

from __future__ import annotations

import pytest
import torch

from scaling.kinds import kind_names, logged_metrics
from scaling.ladder import plan_ladder
from scaling.ladder.cli import main
from scaling.ladder.estimate import plan_rows
from scaling.metrics import JsonlLogger
from scaling.models.registry import get_rung
from scaling.train import checkpoint as ckpt
from scaling.train import run_stage
from tests.unit.probe_kind import CLASSES, NAME, probe_registered
from tests.unit.test_train import stage_cfg

LADDER = """\
name: probed
stages:
  mim: {teacher: clip@teacher}
  clip: {init_vision: mim, init_text: clip@text_init}
  probe: {init_vision: clip}   # the rung's CLIP vision tower, frozen
rungs:
  E14: {teacher: null, stages: [clip]}
  18B: {teacher: E14}
"""


@pytest.fixture(scope="module")
def probe():
    with probe_registered() as kind:
        yield kind
    assert NAME not in kind_names()  # a test's kind leaves no trace


def test_the_probe_trains_on_a_frozen_clip_tower_and_logs_its_metrics(probe, tmp_path):
    synth, clip = tmp_path / "synth", tmp_path / "clip"
    assert run_stage(stage_cfg("clip", clip, synth), JsonlLogger(tmp_path / "clip.jsonl")).status == "finished"
    cfg = stage_cfg(NAME, tmp_path / "probe", synth, f"inputs.init_vision={clip}", "train.samples=480",
                    "eval.max_samples=112", "train.seed=3")
    logger = JsonlLogger(tmp_path / "probe.jsonl")
    result = run_stage(cfg, logger)
    rows = logger.read()
    assert result.status == "finished" and result.steps == 30
    # every metric the kind declares, and only those, as for the built-in kinds
    assert set().union(*rows) - {"step"} == set(logged_metrics(cfg))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns
    top1 = result.metrics["eval/synth_cls/probe_top1"]
    assert top1 > 1.5 / CLASSES, top1  # held-out single objects: chance 1/8 (this seed: 0.30)
    # the tower stayed frozen: the probe's vision weights are the CLIP's
    clip_weights = torch.load(clip / "final" / ckpt.MODEL_FILE, weights_only=True)
    probe_weights = torch.load(tmp_path / "probe" / "final" / ckpt.MODEL_FILE, weights_only=True)
    vision = [k for k in probe_weights if k.startswith("visual.")]
    assert vision and all(torch.equal(probe_weights[k], clip_weights[k]) for k in vision)


def test_a_ladder_file_wires_the_probe_after_the_rungs_clip(probe, tmp_path, capsys):
    ladder = tmp_path / "probed.yaml"
    ladder.write_text(LADDER)
    plan = plan_ladder("E14", "18B", ladder=ladder, runs_dir=tmp_path / "runs", overrides=["probe.train.samples=320"])
    assert [s.name for s in plan.stages] == ["clip@E14", "mim@18B", "clip@18B", "probe@18B"]
    clip, stage = plan.stage("clip@18B"), plan.stage("probe@18B")
    assert stage.cfg.inputs.init_vision == clip.out_dir.as_posix() and stage.init == {"vision": "clip@18B"}
    assert stage.depends_on == ["clip@18B"] and plan.downstream("mim@18B") == ["clip@18B", "probe@18B"]
    assert stage.cfg.train.samples == 320 and stage.cfg.optim.lr == probe.config["optim"]["lr"]
    row = next(r for r in plan_rows(plan) if r["stage"] == "probe@18B")
    assert row["params"] == probe.params(get_rung("18B", proxy=True))
    assert row["train_flops"] == pytest.approx(probe.flops_per_sample(get_rung("18B", proxy=True)) * 320)
    # the dry run shows it as any other stage
    assert main(["--ladder", str(ladder), "--from", "E14", "--to", "18B", "--dry-run",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("probe@18B"))
    assert "vision=clip@18B" in line
