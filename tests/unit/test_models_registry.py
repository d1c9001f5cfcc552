"""Rung registry: names, aliases, proxies, overrides, YAML checks (no torch needed)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import yaml

from scaling import costs, paths
from scaling.models import registry
from scaling.models.registry import (
    LADDER_ORDER,
    RungSpec,
    SpecError,
    TowerSpec,
    UnknownRungError,
    apply_overrides,
    get_rung,
    list_rungs,
)

SWITCHES = (
    "mlp",
    "norm",
    "ln_mode",
    "sub_ln_attn",
    "pos",
    "qkv_bias",
    "qkv_fused",
    "class_token",
    "init",
)


def test_registry_and_costs_import_without_torch_quickly():
    code = (
        "import sys, time; t = time.perf_counter(); import scaling.models.registry, scaling.costs; "
        "from scaling.models import get_rung; get_rung('18B'); get_rung('18B', proxy=True); "
        "print(time.perf_counter() - t); "
        "assert not any(m in sys.modules for m in ('torch', 'timm', 'open_clip')), 'heavy import'"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.0
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("B16", "EVA02-CLIP-B-16"),
        ("L14", "EVA02-CLIP-L-14"),
        ("E14", "EVA02-CLIP-E-14-plus"),
        ("8B", "EVA-CLIP-8B"),
        ("18B", "EVA-CLIP-18B"),
        ("EVA02-CLIP-E-14-plus", "EVA02-CLIP-E-14-plus"),
        ("eva02-b-16", "EVA02-CLIP-B-16"),  # open_clip's name, any case
        ("EVA-18B", "EVA-CLIP-18B"),
    ],
)
def test_aliases_and_full_names_resolve(alias, name):
    assert get_rung(alias).name == name


def test_unknown_rung_lists_valid_names():
    with pytest.raises(UnknownRungError) as info:
        get_rung("ViT-H-14")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "ViT-H-14" in message
    for alias in LADDER_ORDER:
        assert alias in message
    assert "EVA-CLIP-18B" in message


def test_ladder_order_and_listing():
    assert LADDER_ORDER == ["B16", "L14", "E14", "8B", "18B"]
    rungs = list_rungs()
    assert [r.alias for r in rungs[:5]] == LADDER_ORDER
    names = {r.name for r in rungs}
    expected = {
        "EVA02-Ti", "EVA02-S", "EVA02-B", "EVA02-L", "EVA01-CLIP-g-14", "EVA01-CLIP-g-14-plus",
        "EVA02-CLIP-B-16", "EVA02-CLIP-L-14", "EVA02-CLIP-L-14-336", "EVA02-CLIP-E-14",
        "EVA02-CLIP-E-14-plus", "EVA-CLIP-8B", "EVA-CLIP-18B",
    }  # fmt: skip
    assert expected <= names
    assert all(isinstance(r, RungSpec) for r in rungs)


def test_paper_architectures():
    e14, b8, b18 = get_rung("E14"), get_rung("8B"), get_rung("18B")
    assert (e14.vision.depth, e14.vision.width, e14.vision.heads, e14.vision.mlp_hidden) == (
        64,
        1792,
        16,
        15360,
    )
    assert e14.vision.ln_mode == "post"
    assert (b8.vision.depth, b8.vision.width, b8.vision.heads) == (32, 4096, 32)
    assert (b18.vision.depth, b18.vision.width, b18.vision.heads) == (48, 5120, 40)
    for rung, embed in ((b8, 1280), (b18, 1536)):
        v = rung.vision
        assert v.mlp_hidden == 5 * v.width and v.norm == "rmsnorm" and not v.qkv_bias
        assert rung.embed_dim == embed == v.embed_dim == rung.text.embed_dim
        assert (rung.text.depth, rung.text.width) == (32, 1280)
    assert b18.vision.ln_mode == "post" and b8.vision.ln_mode == "pre"
    hidden = {n: get_rung(n).mim.mlp_hidden for n in ("EVA02-Ti", "EVA02-S", "EVA02-B", "EVA02-L")}
    assert hidden == {"EVA02-Ti": 512, "EVA02-S": 1024, "EVA02-B": 2048, "EVA02-L": 2730}
    texts = {
        a: (get_rung(a).text.depth, get_rung(a).text.width) for a in ("B16", "L14", "E14", "g14+")
    }
    assert texts == {"B16": (12, 512), "L14": (12, 768), "E14": (32, 1280), "g14+": (24, 1024)}
    assert get_rung("L14+").vision.image_size == 336


def test_mim_form_matches_clip_vision_without_projection():
    for rung in list_rungs() + list_rungs(proxy=True):
        assert rung.mim.embed_dim is None
        if rung.is_clip:
            assert apply_overrides(rung.vision, {"embed_dim": None}) == rung.mim


def test_proxies_are_small_share_a_grid_and_keep_the_switches():
    proxies = list_rungs(proxy=True)
    grids = {(t.image_size, t.patch_size) for r in proxies for t in (r.vision, r.mim)}
    assert len(grids) == 1, f"proxies must share image and patch size (MIM token grids): {grids}"
    for rung in list_rungs(proxy=True):
        real = get_rung(rung.name)
        assert rung.proxy and not real.proxy
        for tower in (rung.vision, rung.mim):
            assert 64 <= tower.width <= 512 and 2 <= tower.depth <= 12
            assert 32 <= tower.image_size <= 64 and 4 <= tower.patch_size <= 8
        for switch in SWITCHES:
            assert getattr(rung.vision, switch) == getattr(real.vision, switch), (rung.name, switch)
        if rung.text is not None:
            assert 64 <= rung.text.width <= 512 and 1 <= rung.text.depth <= 12


def test_proxies_grow_along_the_ladder_like_the_real_rungs():
    for proxy in (False, True):
        rungs = [get_rung(a, proxy=proxy) for a in LADDER_ORDER]
        sizes = [costs.params(r.vision) for r in rungs]
        flops = [costs.forward_flops(r.vision) for r in rungs]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
        assert flops == sorted(flops), flops
    real = [costs.params(get_rung(a).vision) for a in LADDER_ORDER]
    small = [costs.params(get_rung(a, proxy=True).vision) for a in LADDER_ORDER]
    # the real ladder spans ~200x; the proxies keep the order and a clear spread
    assert real[-1] / real[0] > 100 and small[-1] / small[0] > 4


def test_apply_overrides_flips_switches_and_names_unknown_fields():
    rung = get_rung("B16", proxy=True)
    flipped = apply_overrides(
        rung,
        {
            "mlp": "gelu",
            "norm": "rmsnorm",
            "ln_mode": "post",
            "pos": "abs",
            "qkv_bias": "false",
            "init": "xavier",
        },
    )
    for tower in (flipped.vision, flipped.mim):
        assert (tower.mlp, tower.norm, tower.ln_mode, tower.pos, tower.qkv_bias, tower.init) == (
            "gelu", "rmsnorm", "post", "abs", False, "xavier",
        )  # fmt: skip
    assert flipped.text == rung.text
    only_text = apply_overrides(rung, {"text.depth": "3", "vision.width": 96})
    assert (
        only_text.text.depth == 3
        and only_text.vision.width == 96
        and only_text.mim.width == rung.mim.width
    )
    assert apply_overrides(rung.vision, {"depth": 4}).depth == 4
    with pytest.raises(ValueError, match=r"mlpp.*valid:.*mlp"):
        apply_overrides(rung.vision, {"mlpp": "gelu"})
    with pytest.raises(ValueError, match="wat"):
        apply_overrides(rung, {"wat": 1})
    with pytest.raises(ValueError, match="norm='batchnorm'"):
        apply_overrides(rung, {"norm": "batchnorm"})
    with pytest.raises(ValueError, match="qkv_bias must be true or false"):
        apply_overrides(rung, {"qkv_bias": "maybe"})
    with pytest.raises(ValueError, match="divisible by heads"):
        apply_overrides(rung.vision, {"heads": 3})


def test_every_architecture_value_cites_its_source():
    """Inside vision/text sections (outside proxy), every 'key: value' line has a comment."""
    folder = registry.models_dir()
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 13
    for path in files:
        section = None
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            top = re.match(r"^(\w+):", line)
            if top:
                section = top.group(1)
                if section in ("embed_dim", "published") and "#" not in line:
                    pytest.fail(f"{path.name}:{lineno}: '{section}' has no source comment")
                continue
            value_line = re.match(r"^\s+\w+:\s*\S", line)
            if section in ("vision", "text") and value_line and "#" not in line:
                pytest.fail(f"{path.name}:{lineno}: value without a source comment: {line.strip()}")


def test_bad_rung_file_names_file_and_field(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bad.yaml").write_text(
        "name: Bad\naliases: [BAD]\nembed_dim: 8\nvision: {image_size: 32, patch_size: 4, width: 64, depth: 2, "
        "heads: 2, mlp_hidden: 128, widht: 3}\ntext: null\nproxy: {vision: {depth: 2}}\n"
    )
    monkeypatch.setattr(paths, "EXPERIMENTS_DIR", tmp_path)
    with pytest.raises(SpecError, match=r"bad\.yaml.*widht.*valid:.*width"):
        get_rung("BAD")
    monkeypatch.setattr(paths, "EXPERIMENTS_DIR", tmp_path / "nowhere")
    with pytest.raises(SpecError, match="no rung files"):
        get_rung("B16")


def test_tower_spec_validation():
    with pytest.raises(SpecError, match="multiple of patch_size"):
        TowerSpec(image_size=30, patch_size=4, width=64, depth=2, heads=2, mlp_hidden=128)
    with pytest.raises(SpecError, match="RoPE"):
        TowerSpec(
            image_size=32, patch_size=4, width=66, depth=2, heads=11, mlp_hidden=128, pos="rope"
        )
    spec = TowerSpec(image_size=32, patch_size=4, width=64, depth=2, heads=2, mlp_hidden=128)
    assert (spec.grid, spec.num_patches, spec.num_tokens, spec.head_dim) == (8, 64, 65, 32)


GOOD_RUNG = ("name: Good\naliases: [GOOD]\nembed_dim: 8\nsource: test\npublished: {vision: 1M, text: 1M}\n"
             "vision: {image_size: 32, patch_size: 4, width: 64, depth: 2, heads: 2, mlp_hidden: 128}\n"
             "text: {context_length: 8, vocab_size: 100, width: 32, depth: 1, heads: 2}\n"
             "proxy: {vision: {depth: 1}}\n")


@pytest.mark.parametrize(("text", "message"), [
    ("aliass: [X]\n", r"child\.yaml: unknown config key 'aliass'.*Did you mean: aliases"),
    ("published: 3\n", r"child\.yaml: 'published' has a bad value"),
    ("proxy: {vison: {depth: 1}}\n", r"child\.yaml: unknown config key 'proxy\.vison'.*Did you mean: proxy\.vision"),
    ("embed_dim: wide\n", r"child\.yaml: 'embed_dim' has a bad value"),
    ("vision: 3\n", r"child\.yaml: 'vision' has a bad value"),
])
def test_bad_rung_file_key_or_type_names_file_and_key(tmp_path, monkeypatch, text, message):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "good.yaml").write_text(GOOD_RUNG)
    (tmp_path / "models" / "child.yaml").write_text(f"name: Child\naliases: [CHILD]\nextends: good.yaml\n{text}")
    monkeypatch.setattr(paths, "EXPERIMENTS_DIR", tmp_path)
    assert get_rung("GOOD").name == "Good"  # a file is checked when its rung is used
    with pytest.raises(SpecError, match=message):
        get_rung("CHILD")


def test_extends_merges_towers_and_replaces_names_and_counts(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "good.yaml").write_text(GOOD_RUNG)
    (tmp_path / "models" / "child.yaml").write_text(
        "name: Child\naliases: [CHILD]\nextends: good.yaml\npublished: {vision: 2M}\nvision: {depth: 4}\ntext: null\n")
    monkeypatch.setattr(paths, "EXPERIMENTS_DIR", tmp_path)
    child, good = get_rung("CHILD"), get_rung("GOOD")
    assert child.aliases == ("CHILD",) and dict(child.published) == {"vision": "2M"}
    assert child.vision.depth == 4 and child.vision.width == good.vision.width and child.text is None
    assert get_rung("CHILD", proxy=True).vision.depth == 1  # the parent's proxy section applies


def test_the_ladder_order_is_the_ladder_files(tmp_path):
    from scaling.models.registry import ladder_order

    rungs = yaml.safe_load(paths.DEFAULT_LADDER.read_text())["rungs"]
    assert ladder_order() == LADDER_ORDER == [k for k, v in rungs.items() if v.get("teacher")]
    (tmp_path / "mine.yaml").write_text("rungs:\n  g14: {teacher: null}\n  L14: {teacher: g14}\n"
                                        "  B16: {teacher: L14}\n")
    assert ladder_order(tmp_path / "mine.yaml") == ["L14", "B16"]
    assert ladder_order(tmp_path / "missing.yaml") == []
