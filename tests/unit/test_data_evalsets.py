"""Evaluation set loaders: ImageFolder, clip_benchmark webdataset, retrieval; their error messages."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from scaling.data import DataError
from scaling.data.evalsets import load_classification, load_retrieval


def _save(path, color, size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), color).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "folder"
    for i in range(3):
        _save(root / "b_cat" / f"{i}.png", (255, 0, 0))
    for i in range(2):
        _save(root / "a_dog" / f"{i}.jpg", (0, 0, 255))
    return root


def test_image_folder_with_names_and_templates(folder):
    (folder / "classnames.txt").write_text("dog\ncat\n")
    (folder / "templates.txt").write_text("a photo of a {}.\nart of a {}.\n")
    ds = load_classification(folder, 8)
    assert ds.classnames == ["dog", "cat"] and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.images.shape == (5, 3, 8, 8)
    # normalised with the CLIP mean/std: pure blue images have a high third channel
    assert ds.images[0, 2].mean() > 1.5 and ds.images[0, 0].mean() < -1.5
    assert ds.prompts("cat") == ["a photo of a cat.", "art of a cat."] and ds.chance == 0.5
    batch = next(iter(ds.loader(batch_size=4)))
    assert batch.shape == (4, 3, 8, 8)


def test_image_folder_defaults_to_dir_names_and_openai_templates(folder):
    ds = load_classification(folder, 8)
    assert ds.classnames == ["a dog", "b cat"]
    assert len(ds.templates) == 80 and all("{}" in t for t in ds.templates)


def test_class_name_count_must_match_folders(folder):
    (folder / "classnames.txt").write_text("dog\ncat\nbird\n")
    with pytest.raises(DataError, match="3 class names.*2 class folders"):
        load_classification(folder, 8)


def test_bad_templates_and_missing_paths_are_named(folder, tmp_path):
    (folder / "templates.txt").write_text("no placeholder here\n")
    with pytest.raises(DataError, match="templates.txt"):
        load_classification(folder, 8)
    with pytest.raises(DataError, match="nowhere"):
        load_classification(tmp_path / "nowhere", 8)
    (tmp_path / "emptyset").mkdir()
    with pytest.raises(DataError, match="emptyset"):
        load_classification(tmp_path / "emptyset", 8)


def test_clip_benchmark_webdataset_classification(tmp_path):
    root = tmp_path / "wds_toy"
    members = []
    for i, label in enumerate([1, 0, 1]):
        members += [(f"s{i:04d}.webp", _png((0, 255, 0))), (f"s{i:04d}.cls", str(label).encode())]
    members[0] = ("s0000.png", _png((0, 255, 0)))
    _tar(root / "test" / "0.tar", members[:4])
    _tar(root / "test" / "1.tar", members[4:])
    (root / "test" / "nshards.txt").write_text("2\n")
    (root / "classnames.txt").write_text("apple\nbanana\n")
    (root / "zeroshot_classification_templates.txt").write_text(
        "a photo of a {c}.\nitap of a {c}.\n"
    )
    ds = load_classification(root, 16, mode="resize")
    assert ds.labels.tolist() == [1, 0, 1]
    assert ds.templates == ["a photo of a {}.", "itap of a {}."]
    assert ds.images.shape == (3, 3, 16, 16)


def test_retrieval_from_jsonl_and_from_webdataset(tmp_path):
    root = tmp_path / "ret"
    _save(root / "images" / "0.png", (10, 10, 10))
    _save(root / "images" / "1.png", (200, 10, 10))
    with open(root / "captions.jsonl", "w") as f:
        f.write(json.dumps({"image": "images/0.png", "captions": ["dark", "black square"]}) + "\n")
        f.write(json.dumps({"image": "images/1.png", "captions": ["red"]}) + "\n")
    ds = load_retrieval(root, 8)
    assert ds.captions == [["dark", "black square"], ["red"]]
    texts, owner = ds.texts()
    assert texts == ["dark", "black square", "red"] and owner.tolist() == [0, 0, 1]

    wds = tmp_path / "wds_ret"
    _tar(wds / "test" / "0.tar", [("a.jpg", _png((1, 2, 3))), ("a.txt", b"first\nsecond\n")])
    (wds / "dataset_type.txt").write_text("retrieval\n")
    ds = load_retrieval(wds, 8)
    assert ds.captions == [["first", "second"]] and ds.images.shape == (1, 3, 8, 8)


def test_retrieval_bad_jsonl_names_the_line(tmp_path):
    root = tmp_path / "ret"
    root.mkdir()
    (root / "captions.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(DataError, match="line 1"):
        load_retrieval(root, 8)


def test_eval_modes_differ_on_non_square_images(tmp_path):
    root = tmp_path / "wide"
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    (root / "x").mkdir(parents=True)
    img.save(root / "x" / "0.png")
    crop = load_classification(root, 10, templates=["{}"]).images[0]
    squash = load_classification(root, 10, mode="resize", templates=["{}"]).images[0]
    assert crop.shape == squash.shape == (3, 10, 10)
    assert squash[:, :, 0].mean() > 1.0  # the band survives a squash...
    assert crop[:, :, 0].mean() < 0  # ...but is cut away by the centre crop
    assert not torch.equal(crop, squash)
