"""Atomic checkpoints: manifest last, corrupt/partial ones skipped, pruning, loading weights."""

from __future__ import annotations

import logging

import pytest
import torch

from scaling.train import checkpoint as ckpt


def write(out, step, value=1.0, name=None):
    target = out / "checkpoints" / f"step_{step}" if name is None else out / name
    return ckpt.save(target, rank=0, barrier=lambda: None,
                     write_shared=lambda book: book.save({"w": torch.full((2,), value)}, book.root / ckpt.MODEL_FILE),
                     rank_state={"rng": ckpt.rng_state()}, manifest={"step": step, "samples_seen": step * 4})


def test_save_is_complete_and_latest_wins(tmp_path):
    write(tmp_path, 2)
    write(tmp_path, 10)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_10"
    assert ckpt.read_manifest(tmp_path / "checkpoints" / "step_10")["samples_seen"] == 40
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    write(tmp_path, 12, name="final")
    assert ckpt.latest_checkpoint(tmp_path).name == "final"


def test_partial_and_corrupt_checkpoints_are_ignored_with_a_warning(tmp_path, caplog):
    write(tmp_path, 2)
    write(tmp_path, 4)
    write(tmp_path, 6)
    (tmp_path / "checkpoints" / "step_6" / ckpt.MODEL_FILE).write_bytes(b"truncated")  # size differs
    (tmp_path / "checkpoints" / "step_4" / ckpt.MANIFEST).unlink()  # killed before the manifest
    (tmp_path / "checkpoints" / "step_8").mkdir()  # killed right after mkdir
    with caplog.at_level(logging.WARNING):
        assert ckpt.latest_checkpoint(tmp_path).name == "step_2"
    text = caplog.text
    assert "step_6" in text and "step_4" in text and "step_8" in text


def test_unparsable_manifest_is_corrupt(tmp_path):
    path = write(tmp_path, 3)
    (path / ckpt.MANIFEST).write_text("{not json")
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3, 4):
        write(tmp_path, step)
    ckpt.prune(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_3", "step_4"]


def test_rng_state_roundtrip():
    state = ckpt.rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_load_model_state_from_dirs_and_files(tmp_path):
    write(tmp_path / "stage", 5, value=3.0, name="final")
    assert ckpt.load_model_state(tmp_path / "stage")["w"][0] == 3.0  # stage folder -> final/
    assert ckpt.load_model_state(tmp_path / "stage" / "final")["w"][0] == 3.0
    write(tmp_path / "running", 7, value=4.0)
    assert ckpt.load_model_state(tmp_path / "running")["w"][0] == 4.0  # newest step_N
    wrapped = tmp_path / "open_clip.pt"
    torch.save({"epoch": 3, "state_dict": {"module.visual.w": torch.ones(2)}}, wrapped)
    assert list(ckpt.load_model_state(wrapped)) == ["visual.w"]
    from safetensors.torch import save_file

    save_file({"text.w": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    assert list(ckpt.load_model_state(tmp_path / "m.safetensors")) == ["text.w"]


def test_load_model_state_errors_name_key_and_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"inputs.teacher: checkpoint not found: .*nope"):
        ckpt.load_model_state(tmp_path / "nope", key="inputs.teacher")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.load_model_state(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ckpt.CheckpointError, match="not a state dict file"):
        ckpt.load_model_state(tmp_path / "notes.txt")
