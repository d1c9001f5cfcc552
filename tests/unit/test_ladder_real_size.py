"""Every path the shipped ladder file allows plans clean at real size: each stage fits its GPU
and its global batch is GPUs x micro-batch x accumulation (no torch, no jobs)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from scaling import costs, paths
from scaling.batching import memory, phase_config, stage_rungs
from scaling.config import stage_phases
from scaling.ladder import load_ladder, plan_ladder
from scaling.ladder.cli import main
from scaling.ladder.estimate import plan_problems, plan_rows

# The papers' hardware (EVA-CLIP-18B, Table 1): E/14+ CLIP on 144 x A100-80GB at 1000 images
# per GPU (EVA-CLIP), EVA-CLIP-8B on 384 x A100-40GB, EVA-CLIP-18B on 360 x A100-40GB at 108k.
PAPER_HARDWARE = {
    "clip@E14": {"nodes": 18, "gpus_per_node": 8, "gpu": "a100-80gb", "batch_size": 144_000},
    "clip@8B": {"nodes": 48, "gpus_per_node": 8, "gpu": "a100-40gb"},
    "clip@18B": {"nodes": 45, "gpus_per_node": 8, "gpu": "a100-40gb", "batch_size": 108_000},
}


def _recipe(stage: str) -> dict:
    kind, rung = stage.split("@")
    path = paths.EXPERIMENTS_DIR / "recipes" / kind / f"{rung}.yaml"
    return yaml.safe_load(path.read_text()) or {}


def _paper_layers() -> dict:
    """Ladder-file layers setting the papers' hardware where the shipped recipe differs (none,
    once the recipes carry it); an 8B batch that does not divide 384 GPUs is rounded to one that does."""
    layers = {}
    for stage, hw in PAPER_HARDWARE.items():
        recipe = _recipe(stage)
        res, train = recipe.get("resources", {}), recipe.get("train", {})
        layer: dict = {}
        want = {k: v for k, v in hw.items() if k != "batch_size"}
        if any(res.get(k) != v for k, v in want.items()):
            layer["resources"] = want
        gpus = hw["nodes"] * hw["gpus_per_node"]
        batch = hw.get("batch_size") or train.get("batch_size")
        if batch % gpus:
            batch = round(batch / gpus) * gpus
        if train.get("batch_size") != batch:
            layer["train"] = {"batch_size": batch}
        if layer:
            layers[stage] = layer
    return layers


@pytest.fixture(scope="module")
def ladder_file(tmp_path_factory) -> Path:
    shipped = paths.EXPERIMENTS_DIR / "ladders" / "eva.yaml"
    data = yaml.safe_load(shipped.read_text())
    for stage, layer in _paper_layers().items():
        data.setdefault("config", {})[stage] = layer
    out = tmp_path_factory.mktemp("ladder") / "eva.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def all_paths(keys: list[str]):
    """(--from, --to, --via) for every pair of rungs and every subset of the rungs between."""
    for i, j in itertools.combinations(range(len(keys)), 2):
        between = keys[i + 1 : j]
        for n in range(len(between) + 1):
            for via in itertools.combinations(between, n):
                yield keys[i], keys[j], list(via)


def test_every_shipped_path_fits_and_divides_at_real_size(ladder_file, tmp_path):
    keys = load_ladder(ladder_file).keys()
    checked, stages = 0, set()
    for start, end, via in all_paths(keys):
        plan = plan_ladder(start, end, via, ladder=ladder_file, proxy=False, runs_dir=tmp_path,
                           allow_missing_teacher=True)
        rows = plan_rows(plan)
        assert plan_problems(rows) == [], f"--from {start} --to {end} --via {via}"
        for row in rows:
            assert row["fits"] and row["divides"], row["stage"]
            assert row["processes"] * row["micro_batch"] * row["accumulation"] == row["global_batch"]
            assert row["memory_per_gpu_gb"] <= 0.9 * row["gpu_memory_gb"]
            stages.add((row["stage"], plan.stage(row["stage"]).teacher_rung))
        checked += 1
    # every pair of rungs with every subset of the rungs between: sum of 2^(rungs between)
    expected = sum(2 ** (j - i - 1) for i, j in itertools.combinations(range(len(keys)), 2))
    assert checked == expected and len(stages) > 10  # every mim@X with each teacher


def test_plan_uses_the_papers_hardware(ladder_file, tmp_path):
    plan = plan_ladder("L14", "18B", ["E14", "8B"], ladder=ladder_file, proxy=False, runs_dir=tmp_path,
                       allow_missing_teacher=True)
    rows = {r["stage"]: r for r in plan_rows(plan)}
    assert rows["clip@E14"]["processes"] == 144 and rows["clip@E14"]["gpu"] == "a100-80gb"
    assert rows["clip@E14"]["micro_batch"] == 1000  # EVA-CLIP: 1000 images per GPU
    assert rows["clip@8B"]["processes"] == 384 and rows["clip@18B"]["processes"] == 360
    assert rows["clip@18B"]["global_batch"] == 108_000


def test_a_stage_that_does_not_fit_exits_2_naming_it_and_what_would_fit(tmp_path, capsys):
    args = ["--from", "E14", "--to", "18B", "--no-proxy", "--dry-run", "--runs-dir", str(tmp_path),
            "clip@18B.train.micro_batch=300", "clip@18B.resources.micro_batch=null", "clip@18B.resources.nodes=45",
            "clip@18B.train.batch_size=108000",
            "clip@18B.model.grad_checkpointing=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    # a stage with phases names the phase whose memory is too large
    assert re.search(r"clip@18B( phase '[\w-]+')?: [\d.]+ GiB per GPU", err) and "usable of a100-40gb" in err
    assert "would fit:" in err and "model.grad_checkpointing=true" in err and "train.micro_batch=" in err
    assert "nothing submitted" in err and "--force" in err
    # --force plans (and would submit) anyway, warning
    assert main([*args, "--force"]) == 0
    assert re.search(r"warning: clip@18B( phase '[\w-]+')?:", capsys.readouterr().err)


def test_a_batch_that_does_not_divide_exits_2_with_batches_that_do(tmp_path, capsys):
    args = ["--from", "E14", "--to", "18B", "--no-proxy", "--dry-run", "--runs-dir", str(tmp_path),
            "clip@18B.resources.micro_batch=null", "clip@18B.resources.nodes=45", "clip@18B.train.batch_size=108001"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "clip@18B: global batch 108001 is not 360 processes" in err
    assert "train.batch_size=108000 or 108360" in err


def test_auto_micro_batch_is_the_largest_that_fits(tmp_path):
    plan = plan_ladder("E14", "18B", proxy=False, runs_dir=tmp_path, allow_missing_teacher=True,
                       overrides=["clip@18B.resources.micro_batch=auto", "clip@18B.resources.nodes=45",
                                  "clip@18B.train.batch_size=108000"])
    stage = plan.stage("clip@18B")
    micro = int(stage.cfg.train.micro_batch)
    row = next(r for r in plan_rows(plan) if r["stage"] == "clip@18B")
    assert row["fits"] and row["divides"] and (108_000 // 360) % micro == 0
    spec, teacher = stage_rungs(stage.cfg)
    phases = [phase_config(stage.cfg, p) for p in stage_phases(stage.cfg)]
    assert all(costs.fits(memory(c, spec, teacher, 360, micro), "a100-40gb") for c in phases)
    bigger = [m for m in range(micro + 1, 108_000 // 360 + 1) if (108_000 // 360) % m == 0]
    for m in bigger:  # every larger micro-batch that divides does not fit some phase
        assert not all(costs.fits(memory(c, spec, teacher, 360, m), "a100-40gb") for c in phases)


def test_dry_run_totals_the_plan_in_the_units_of_scaling_rungs(tmp_path, capsys):
    import json

    from scaling.rungs.__main__ import main as models_main

    args = ["--from", "E14", "--to", "18B", "--no-proxy", "--dry-run", "--runs-dir", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(args) == 0
    text = capsys.readouterr().out
    hours = sum(r["gpu_hours"] for r in rows.values())
    # clip@18B waits for mim@18B: the wall time is the chain's, not the longest stage's
    assert rows["clip@18B"]["depends_on"] == ["mim@18B"]
    days = (rows["mim@18B"]["wall_hours"] + rows["clip@18B"]["wall_hours"]) / 24
    total = next(line for line in text.splitlines() if line.startswith("total:"))
    assert f"{round(hours / 1e3)}k GPU-hours" in total and f"{days:.1f} wall days" in total
    # params and samples in B, as `python -m scaling.rungs` writes them
    mim = next(line for line in text.splitlines() if line.startswith("mim@18B"))
    assert f"{rows['mim@18B']['params'] / 1e9:.3g}B" in mim and f"{rows['mim@18B']['samples'] / 1e9:.3g}B" in mim
    assert models_main(["--rung", "18B", "--kind", "mim"]) == 0
    assert f"{rows['mim@18B']['samples'] / 1e9:.2f}B samples" in capsys.readouterr().out
    # where the two compute a stage differently (the phases of clip@18B) the models report says why
    assert models_main(["--rung", "18B"]) == 0
    assert "`python -m scaling.ladder --dry-run` sums each phase's FLOPs" in capsys.readouterr().out
