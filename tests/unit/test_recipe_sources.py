"""Every value in the recipes names where it comes from: a paper's table or section, a BAAI file,
or ``no source: <why>``. Comments are read line by line (a YAML parser drops them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scaling.paths import EXPERIMENTS_DIR

RECIPES = sorted((EXPERIMENTS_DIR / "recipes").rglob("*.yaml"))
MODELS = sorted((EXPERIMENTS_DIR / "models").glob("*.yaml"))
PAPER = r"(EVA-02|EVA-CLIP-18B|EVA-CLIP)(,)? (Tables? \d+|§\s?\d)"
BAAI = r"BAAI [\w./-]+\.(py|md|json)"
SOURCE = re.compile(rf"{PAPER}|{BAAI}|no source: \S")
# "key: value" or "- key: value" with a scalar or flow value (a bare "key:" opens a block)
VALUE = re.compile(r"^\s*(?:-\s+)?[\w.@-]+:\s*[^\s#]")


def unsourced(path: Path) -> list[str]:
    bad = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("#") or not VALUE.match(line):
            continue
        _, _, comment = line.partition(" #")
        if not SOURCE.search(comment):
            bad.append(f"{path.name}:{number}: {line.strip()}")
    return bad


def test_the_checker_tells_sourced_from_unsourced(tmp_path):
    sample = tmp_path / "r.yaml"
    sample.write_text("optim:\n  lr: 1.0e-3   # EVA-02 Table 22: peak lr\n  eps: 1e-6\n"
                      "  betas: [0.9, 0.95]  # seed 001\n  name: lamb  # no source: why\n"
                      "  grad_clip: 3.0  # BAAI EVA-02/asuka/run_eva_pretraining.py: --clip_grad\n"
                      "phases:\n  - name: a   # EVA-CLIP-18B §3: first phase\n")
    assert [b.split(":")[1] for b in unsourced(sample)] == ["3", "4"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(EXPERIMENTS_DIR)))
def test_every_recipe_value_carries_its_source(path):
    assert not unsourced(path), "values without a source or a 'no source: <why>' comment:\n" + \
        "\n".join(unsourced(path))


@pytest.mark.parametrize("path", [*RECIPES, *MODELS], ids=lambda p: p.name)
def test_citations_name_the_paper_not_a_file_number(path):
    assert not re.search(r"seed (table|00\d)", path.read_text()), f"{path.name} cites 'seed ...'"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_training_keys_carry_their_source(path):
    lines = [line for line in path.read_text().splitlines() if re.match(r"^\s+(init|drop_path):", line)]
    bad = [line.strip() for line in lines if not SOURCE.search(line.partition(" #")[2])]
    assert not bad, f"{path.name}: {bad}"


def test_recipe_values_the_papers_give():
    from scaling.config import load_stage_config, stage_phases

    def real(kind, rung):
        return load_stage_config(kind, rung, proxy=False)

    mim_b, mim_l = real("mim", "B16"), real("mim", "L14")
    assert mim_b.train.samples == 1_000_000 * 2048  # EVA-02 Table 22: 1M steps x 2k
    assert (mim_b.model.drop_path, mim_l.model.drop_path) == (0.0, 0.1)  # Table 22: B 0.0, L 0.1
    assert mim_b.optim.warmup_samples > 0 and mim_l.optim.warmup_samples > 0  # Table 22: 1 epoch
    for rung in ("B16", "L14"):
        assert real("clip", rung).model.patch_dropout == 0.0  # EVA-02 Table 26: no FLIP
    e14 = real("clip", "E14")
    assert e14.resources.gpu == "a100-80gb" and e14.resources.nodes * e14.resources.gpus_per_node == 144
    assert e14.train.batch_size == 144 * 1000
    b8 = real("clip", "8B")
    assert b8.resources.nodes * b8.resources.gpus_per_node == 384 and b8.resources.gpu == "a100-40gb"
    assert b8.train.batch_size % 384 == 0
    phases = stage_phases(real("clip", "18B"))
    assert [(p.samples, p.patch_dropout) for p in phases] == [(5_400_000_000, 0.5), (600_000_000, 0.0)]
