"""Checkpoints that prove themselves: content hashes taken while writing, checked at load, the
newest good checkpoint taken when a newer one is corrupt, and failed writes reported in one
line with their errno."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os

import pytest
import torch

from scaling.train import checkpoint as ckpt
from scaling.train import integrity


def write(out, step, value=1.0, model=None):
    def shared(book):
        if model is not None:
            model(book)
        book.save({"w": torch.full((4096,), value)}, book.root / ckpt.MODEL_FILE)

    return ckpt.save(out / "checkpoints" / f"step_{step}", rank=0, barrier=lambda: None, write_shared=shared,
                     rank_state={"step": step}, manifest={"step": step, "samples_seen": step * 4})


def overwrite(path, offset=100, size=4096):
    """Same-size corruption: bytes overwritten in place, the size unchanged."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size))


def loader(seen):
    def load(path, manifest):
        seen.append(path.name)
        integrity.load(path / ckpt.MODEL_FILE, manifest["step"], weights_only=True)
        integrity.load(path / "rank_0.pt", manifest["step"], weights_only=False)
    return load


def test_the_manifest_holds_each_files_hash_taken_while_writing(tmp_path):
    path = write(tmp_path, 3)
    manifest = ckpt.read_manifest(path)
    assert set(manifest["digests"]) == {ckpt.MODEL_FILE, "rank_0.pt"} == set(manifest["files"])
    for name, digest in manifest["digests"].items():
        assert digest == "sha256:" + hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert not list(path.glob(".digests-*"))


def test_a_file_that_fails_its_hash_falls_back_to_the_checkpoint_before(tmp_path, caplog):
    write(tmp_path, 2, value=2.0)
    newest = write(tmp_path, 4, value=4.0)
    overwrite(newest / ckpt.MODEL_FILE, offset=1000)
    seen = []
    with caplog.at_level(logging.WARNING):
        path, manifest = ckpt.load_newest_good(tmp_path, 0, loader(seen))
    assert (path.name, manifest["step"], seen) == ("step_2", 2, ["step_2"])  # step_4 never unpickled
    assert f"{newest / ckpt.MODEL_FILE} (step 4) fails its content hash" in caplog.text


def test_a_file_that_does_not_unpickle_falls_back_too(tmp_path, caplog):
    write(tmp_path, 2)
    newest = write(tmp_path, 4)
    overwrite(newest / "rank_0.pt", offset=0, size=64)
    manifest = json.loads((newest / ckpt.MANIFEST).read_text())
    del manifest["digests"]  # as a checkpoint written before hashes were recorded
    (newest / ckpt.MANIFEST).write_text(json.dumps(manifest))
    seen = []
    with caplog.at_level(logging.WARNING):
        path, _ = ckpt.load_newest_good(tmp_path, 0, loader(seen))
    assert path.name == "step_2" and seen == ["step_4", "step_2"]
    assert f"{newest / 'rank_0.pt'} (step 4) cannot be read" in caplog.text


def test_no_good_checkpoint_says_which_and_what_to_do(tmp_path):
    for step in (2, 4):
        overwrite(write(tmp_path, step) / ckpt.MODEL_FILE, offset=1000)
    with pytest.raises(ckpt.CheckpointError, match=r"no good checkpoint in .*: step_4 \(model.pt\), "
                                                   r"step_2 \(model.pt\) .*Restore them from a copy"):
        ckpt.load_newest_good(tmp_path, 0, loader([]))
    assert ckpt.load_newest_good(tmp_path / "fresh", 0, loader([])) is None


def test_a_downstream_stage_refuses_corrupt_weights(tmp_path):
    path = write(tmp_path, 2)
    overwrite(path / ckpt.MODEL_FILE, offset=1000)
    with pytest.raises(ckpt.CheckpointError, match=r"inputs.teacher: .*model.pt \(step 2\) fails its content"):
        ckpt.load_model_state(path, key="inputs.teacher")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_a_failed_write_names_path_and_errno_and_leaves_no_partial_folder(tmp_path):
    def full_disk(book):  # a real ENOSPC from the kernel: the file is /dev/full
        (book.root / "extra.pt").symlink_to("/dev/full")
        book.save({"w": torch.zeros(1 << 18)}, book.root / "extra.pt")

    with pytest.raises(integrity.CheckpointWriteError) as caught:
        write(tmp_path, 2, model=full_disk)
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot write checkpoint {tmp_path / 'checkpoints' / 'step_2'}: " in message
    assert f"extra.pt: No space left on device (errno {errno.ENOSPC} ENOSPC)" in message
    assert not list((tmp_path / "checkpoints").iterdir())


def test_each_rank_verifies_only_the_files_it_loads():
    files = {"rank_0.pt": 1, "rank_1.pt": 1, "train_state.pt": 1, "model.pt": 1,
             "deepspeed/state/mp_rank_00_model_states.pt": 1, "deepspeed/zero_to_fp32.py": 1,
             "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt": 1,
             "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
             "deepspeed/state/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 1}
    assert integrity.files_loaded_by({"files": files, "deepspeed": True}, 1) == [
        "deepspeed/state/mp_rank_00_model_states.pt", "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "rank_1.pt", "train_state.pt"]
    plain = {"rank_0.pt": 1, "rank_1.pt": 1, "train_state.pt": 1, "model.pt": 1}
    assert integrity.files_loaded_by({"files": plain, "deepspeed": False}, 0) == [
        "model.pt", "rank_0.pt", "train_state.pt"]
