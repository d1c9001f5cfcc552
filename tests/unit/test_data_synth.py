"""The synthetic world: layout, determinism, richness of scenes and captions, held-out sets, cache, CLI."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scaling.data import synth, synth_cache, world
from scaling.data.evalsets import load_classification, load_retrieval
from scaling.data.world_drawing import render


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_in_img2dataset_layout(tmp_path):
    paths = synth.write_world(tmp_path, samples=25, image_size=32, seed=0, shard_size=10)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    members = _members(paths[0])
    assert len(members) == 30
    img = Image.open(io.BytesIO(members["000000000.png"])).convert("RGB")
    assert img.size == (32, 32)
    caption = members["000000000.txt"].decode()
    meta = json.loads(members["000000000.json"])
    assert meta["caption"] == caption and meta["key"] == "000000000" and meta["status"] == "success"
    assert caption.endswith(".") and len(caption.split()) >= 2
    assert synth.shard_pattern(paths) == str(tmp_path / "train-{000000..000002}.tar")
    assert len(_members(paths[2])) == 15


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    a = synth.write_world(tmp_path / "a", samples=12, image_size=32, seed=3, shard_size=12)[
        0
    ].read_bytes()
    b = synth.write_world(tmp_path / "b", samples=12, image_size=32, seed=3, shard_size=12)[
        0
    ].read_bytes()
    c = synth.write_world(tmp_path / "c", samples=12, image_size=32, seed=4, shard_size=12)[
        0
    ].read_bytes()
    assert a == b and a != c


def test_a_sample_does_not_depend_on_the_shard_layout():
    img1, cap1, _ = synth.make_sample("train", 0, 17, 64)
    img2, cap2, _ = synth.make_sample("train", 0, 17, 64)
    assert np.array_equal(img1, img2) and cap1 == cap2 and img1.shape == (64, 64, 3)


def test_jpeg_shards(tmp_path):
    path = synth.write_world(tmp_path, samples=3, image_size=32, image_format="jpg")[0]
    assert Image.open(io.BytesIO(_members(path)["000000000.jpg"])).format == "JPEG"


@pytest.mark.parametrize("size", [224, 336, 448])
def test_real_size_shards_are_jpeg_in_img2dataset_layout(tmp_path, size):
    """From 128 px up the default writes JPEG, as img2dataset does; the stream reads them."""
    from scaling.data.shards import ShardStream
    from scaling.data.transforms import train_transform

    assert synth.main(["--out", str(tmp_path), "--samples", "2", "--image-size", str(size)]) == 0
    members = _members(tmp_path / "train-000000.tar")
    assert sorted(members) == [f"00000000{i}.{e}" for i in range(2) for e in ("jpg", "json", "txt")]
    img = Image.open(io.BytesIO(members["000000000.jpg"]))
    assert img.format == "JPEG" and img.size == (size, size)
    assert json.loads(members["000000000.json"])["width"] == size
    batch = next(iter(ShardStream(str(tmp_path / "train-000000.tar"), batch_size=2,
                                  transform=train_transform(224), shuffle_buffer=0)))
    assert batch["image"].shape == (2, 3, 224, 224)


def test_webp_shards(tmp_path):
    path = synth.write_world(tmp_path, samples=2, image_size=64, image_format="webp")[0]
    assert Image.open(io.BytesIO(_members(path)["000000000.webp"])).format == "WEBP"
    with pytest.raises(ValueError, match="unknown image format 'gif'"):
        synth.write_world(tmp_path, samples=2, image_format="gif")


def test_world_is_rich_and_captions_vary():
    scenes, captions = [], []
    for i in range(400):
        _, cap, scene = synth.make_sample("train", 0, i, 32)
        scenes.append(scene)
        captions.append(cap)
    ents = [e for s in scenes for e in s.entities]
    assert {e.shape for e in ents} == set(world.SHAPES)
    assert {e.colour for e in ents} == set(world.COLOURS)
    assert {e.texture for e in ents} == set(world.TEXTURES)
    assert {e.size for e in ents} == set(world.SIZES)
    assert {e.count for e in ents} == {1, 2, 3}
    assert Counter(len(s.entities) for s in scenes).keys() == {1, 2, 3}
    text = " ".join(captions)
    for phrase in ("left of", "above", "background", "two ", "three ", "striped", "corner"):
        assert phrase in text, phrase
    assert len(set(captions)) > 300  # mostly distinct
    # word order varies: the main object is not always named first
    assert any(c.startswith(("in the", "on the", "at the")) for c in captions)


def test_held_out_combinations_and_prompts_never_occur_in_training():
    for i in range(1500):
        _, cap, scene = synth.make_sample("train", 0, i, 32)
        for e in scene.entities:
            assert (e.shape, e.colour) not in world.HELD_OUT
        assert not re.search(r"\b(photo|picture|image|rendering)\b", cap)
    assert len(world.HELD_OUT) == 8
    assert {s for s, _ in world.HELD_OUT} == set(world.SHAPES)
    assert {c for _, c in world.HELD_OUT} == set(world.COLOURS)


def test_eval_sets_load_with_stated_chance(tmp_path):
    paths = synth.write_eval_sets(
        tmp_path, image_size=32, seed=0, samples_per_class=2, retrieval_samples=20
    )
    cls = load_classification(paths["classification"], 32)
    assert len(cls.classnames) == 56 and len(cls) == 112 and cls.chance == pytest.approx(1 / 56)
    assert cls.images.shape == (112, 3, 32, 32)
    assert all("{}" in t and "photo" in " ".join(cls.templates) for t in cls.templates)
    # labels match the class folder of each file
    for i in (0, 50, 111):
        folder = Path(cls.source.items[i]).parent.name.replace("_", " ")
        assert cls.classnames[int(cls.labels[i])] == folder
    comp = load_classification(paths["composition"], 32)
    assert len(comp.classnames) == 64 and len(comp) == 16
    shown = {comp.classnames[int(i)] for i in comp.labels}
    assert shown == {f"{c} {s}" for s, c in world.HELD_OUT}
    ret = load_retrieval(paths["retrieval"], 32)
    assert len(ret) == 20 and all(len(c) == 2 for c in ret.captions)
    texts, owner = ret.texts()
    assert len(texts) == 40 and owner.tolist()[:4] == [0, 0, 1, 1]


def test_eval_images_differ_from_training_images():
    train = {synth.make_sample("train", 0, i, 32)[0].tobytes() for i in range(200)}
    rnd = world.sample_rng("eval-cls", 0, 0)
    scene = world.sample_scene(rnd, 32, combos=(("circle", "red"),), single=True)
    assert render(scene, 32, rnd).tobytes() not in train


def _ensure(args):
    cache, samples = args
    return synth_cache.ensure_synthetic(cache, samples=samples, image_size=16, seed=0, shard_size=20)


def test_ensure_synthetic_generates_once_and_survives_concurrency(tmp_path, monkeypatch):
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(_ensure, [(str(tmp_path), 40)] * 2)
    assert results[0] == results[1]
    out = results[0]
    assert set(out) == {"train", "classification", "composition", "retrieval"}
    assert out["train"].endswith("train-{000000..000001}.tar")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    marker = next(tmp_path.glob("synth-*")) / synth_cache.MARKER
    assert marker.exists()

    def boom(*a, **k):
        raise AssertionError("regenerated although the cache was complete")

    monkeypatch.setattr(synth_cache, "write_world", boom)
    assert _ensure((str(tmp_path), 40)) == out
    assert load_classification(out["classification"], 16).classnames


def test_cli_writes_shards_eval_sets_and_grid(tmp_path, capsys):
    out = tmp_path / "w"
    assert (
        synth.main(
            [
                "--out",
                str(out),
                "--samples",
                "5",
                "--image-size",
                "32",
                "--eval",
                "--samples-per-class",
                "1",
                "--grid",
                str(tmp_path / "grid.png"),
                "--grid-count",
                "4",
            ]
        )
        == 0
    )
    assert (out / "train-000000.tar").exists() and (
        out / "eval" / "classification" / "classnames.txt"
    ).exists()
    assert Image.open(tmp_path / "grid.png").size[0] > 400
    assert "train-000000.tar" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--out", "x"],
        ["--out", "x", "--samples", "5", "--image-size", "8"],
        ["--out", "x", "--samples", "-1"],
    ],
)
def test_cli_user_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_digits_set_from_scikit_learn(tmp_path):
    assert synth.main(["--out", str(tmp_path), "--digits", "--image-size", "16"]) == 0
    ds = load_classification(tmp_path / "eval" / "digits", 16)
    assert ds.classnames[:3] == ["zero", "one", "two"] and len(ds) == 1797
    assert (
        ds.chance == pytest.approx(0.1) and ds.prompts("one")[0] == 'a photo of the number: "one".'
    )
