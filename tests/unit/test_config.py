"""The stage config: recipe layers, typed overrides, and errors that name the key and the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import DictConfig

import scaling
from scaling.config import (
    FREE_DICTS,
    ConfigError,
    fingerprint,
    flatten,
    load_stage_config,
    recipe_files,
    save_resolved,
    schema,
)


def test_recipe_layers_apply_in_order():
    cfg = load_stage_config("clip", "18B", proxy=False)
    # EVA-CLIP-18B Table 13 values come from the rung recipe on top of the generic CLIP recipe
    assert cfg.optim.name == "lamb"
    assert list(cfg.optim.betas) == [0.9, 0.95]
    assert cfg.loss.temperature == 0.01
    assert cfg.distributed.zero_stage == 3
    assert cfg.train.batch_size == 108000
    assert cfg.stage.name == "clip@18B"


def test_proxy_layer_wins_over_rung_recipe():
    cfg = load_stage_config("clip", "18B", proxy=True)
    assert cfg.distributed.deepspeed is False and cfg.distributed.zero_stage == 0
    assert cfg.train.precision == "fp32"
    # the recipe itself (what is being scaled) stays the paper's
    assert cfg.optim.name == "lamb" and cfg.loss.temperature == 0.01


def test_mim_recipe_is_eva02_table22():
    cfg = load_stage_config("mim", "L14", proxy=False)
    assert cfg.optim.name == "adamw"
    assert cfg.optim.lr == pytest.approx(1.5e-3)
    assert list(cfg.data.crop_scale) == [0.2, 1.0]
    # 40 % of 256 patches as EVA-02's scripts count it: 105
    assert round(cfg.loss.mask_ratio * 256) == 105


def test_overrides_are_typed():
    cfg = load_stage_config("clip", "B16", overrides=["optim.lr=1e-3", "train.samples=128"])
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.train.samples == 128


def test_tower_overrides_are_open():
    cfg = load_stage_config("mim", "B16", overrides=["model.vision.mlp=gelu"])
    assert cfg.model.vision.mlp == "gelu"


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_stage_config("clip", "B16", overrides=["optim.lrr=1e-3"])
    msg = str(err.value)
    assert "optim.lrr" in msg and "command line" in msg and "optim.lr" in msg


def test_bad_value_type_names_key():
    with pytest.raises(ConfigError, match="train.samples"):
        load_stage_config("clip", "B16", overrides=["train.samples=lots"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        load_stage_config("clip", "B16", overrides=["train.precision=fp8"])


def test_error_names_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("optim:\n  layer_decay: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_stage_config("clip", "B16", files=[bad])
    assert str(bad) in str(err.value) and "optim.layer_decay" in str(err.value)


def test_unknown_rung_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_stage_config("clip", "XL99")
    assert "18B" in str(err.value) and "E14" in str(err.value)


def test_zero_needs_deepspeed():
    with pytest.raises(ConfigError, match="deepspeed"):
        load_stage_config("clip", "B16", overrides=["distributed.zero_stage=2"])


def test_micro_batch_must_divide_batch():
    with pytest.raises(ConfigError, match="micro_batch"):
        load_stage_config("clip", "B16", overrides=["train.batch_size=64", "train.micro_batch=48"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_stage_config("clip", "B16", overrides=["optim.lr"])


def test_fingerprint_tracks_identity_not_placement():
    a = load_stage_config("clip", "B16")
    b = load_stage_config("clip", "B16", overrides=["out_dir=elsewhere", "tracking.experiment=x"])
    c = load_stage_config("clip", "B16", overrides=["optim.lr=1e-4"])
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert fingerprint(a) != fingerprint(a, upstream=["abc"])


def test_flatten_and_save(tmp_path):
    cfg = load_stage_config("clip", "B16")
    flat = flatten(cfg)
    assert flat["optim.name"] == "lamb" and flat["data.crop_scale"] == "[0.9, 1.0]"
    path = save_resolved(cfg, tmp_path / "cfg" / "config.yaml")
    assert "optim:" in path.read_text()


def test_recipe_files_exist_for_every_rung():
    for rung in ("B16", "L14", "E14", "8B", "18B"):
        files = recipe_files("clip", rung, proxy=True)
        assert files[0].name == "clip.yaml" and files[-1].parent.name == "proxy"


# Keys read by a name the walk below cannot tie to their section, each with who reads it.
READ_BY_NAME = {
    "resources.account": "launch.executors.slurm_parameters loops over (partition, account, qos, constraint)",
    "resources.qos": "launch.executors.slurm_parameters loops over (partition, account, qos, constraint)",
    "resources.constraint": "launch.executors.slurm_parameters loops over (partition, account, qos, constraint)",
}


def _schema_leaves(cfg, prefix=""):
    for key in cfg:
        full, node = f"{prefix}{key}", cfg._get_node(key)
        if isinstance(node, DictConfig) and full not in FREE_DICTS:
            yield from _schema_leaves(node, full + ".")
        else:
            yield full


def _is_read(key: str, sources: dict[str, str]) -> bool:
    """``section.leaf`` spelled out (``cfg.optim.lr``, ``"optim.lr"``); the leaf read from a name
    bound to the section (``res = cfg.resources`` ... ``res.nodes``); or the section handed on
    whole (``cfg.resources``) and the leaf read by its name (``res.get("mem_gb")``)."""
    section, _, leaf = key.rpartition(".")
    spelled = re.compile(rf"\b{re.escape(key)}\b")
    bound = re.compile(rf"^\s*(\w+) = [\w.]*\.{re.escape(section)}$", re.M)
    whole = re.compile(rf"\.{re.escape(section)}\b(?![.\w])")
    by_name = re.compile(rf"(?:get\(|\[)[\"']{leaf}[\"']")
    for text in sources.values():
        if spelled.search(text) or any(re.search(rf"\b{v}\.{leaf}\b", text) for v in bound.findall(text)):
            return True
    return any(whole.search(t) for t in sources.values()) and any(by_name.search(t) for t in sources.values())


def _package_sources() -> dict[str, str]:
    root = Path(scaling.__file__).parent
    return {str(p): p.read_text() for p in root.rglob("*.py") if p.name != "config_schema.py"}


def test_every_schema_key_is_read_somewhere():
    sources = _package_sources()
    dead = [k for k in _schema_leaves(schema()) if k not in READ_BY_NAME and not _is_read(k, sources)]
    assert not dead, f"schema keys nothing reads (remove them, or read them): {dead}"
    stale = [k for k in READ_BY_NAME if k not in set(_schema_leaves(schema()))]
    assert not stale, f"allow-list entries for keys the schema no longer has: {stale}"


def test_dead_key_check_catches_a_key_only_the_schema_names():
    sources = _package_sources()
    # the text tower's context length comes from the rung spec (rung.text.context_length)
    assert not _is_read("data.context_length", sources)
    assert _is_read("resources.mem_gb", sources) and _is_read("optim.lamb_trust_clip", sources)


@pytest.mark.parametrize(("override", "message"), [
    ("resources.nodes=0", "'resources.nodes' must be >= 1; got 0"),
    ("resources.tasks_per_node=0", "'resources.tasks_per_node' must be >= 1"),
    ("resources.cpus_per_task=0", "'resources.cpus_per_task' must be >= 1"),
    ("resources.gpus_per_node=-1", "'resources.gpus_per_node' must be >= 0"),
    ("resources.timeout_min=0", "'resources.timeout_min' must be > 0"),
    ("resources.mem_gb=-4", "'resources.mem_gb' must be >= 0"),
    ("resources.nodes=two", "'resources.nodes' has a bad value"),
])
def test_resources_are_validated_at_load(override, message):
    with pytest.raises(ConfigError, match=re.escape(f"command line: {message}")):
        load_stage_config("clip", "B16", overrides=[override])
    assert load_stage_config("clip", "B16", overrides=["resources.gpus_per_node=0", "resources.mem_gb=0"])


def test_eval_cadence_gives_every_stage_its_points_unless_set():
    from scaling.eval.cadence import eval_every_samples

    def every(*overrides):
        return eval_every_samples(load_stage_config("clip", "B16", proxy=True, overrides=list(overrides)))

    assert every("train.samples=4000", "train.batch_size=32") == 1000  # 4 points: 1000, 2000, 3000, end
    assert every("train.samples=4000", "train.batch_size=32", "eval.points=8") == 500
    assert every("train.samples=4000", "eval.points=1") == 0  # only at the end
    assert every("train.samples=4000", "eval.every_samples=5000") == 5000  # set: it wins
    assert every("train.samples=4000", "eval.every_samples=0") == 0
    # the samples actually trained (whole steps): 100 samples of 32 are 3 steps, 96 samples
    assert every("train.samples=100", "train.batch_size=32") == 24
    with pytest.raises(ConfigError, match="eval.points"):
        load_stage_config("clip", "B16", proxy=True, overrides=["eval.points=0"])
