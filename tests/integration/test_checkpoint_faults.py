"""Checkpoint faults on a real stage process: a same-size corruption of any file of the newest
checkpoint is caught by its content hash and the stage resumes from the checkpoint before it, to
the weights of an uninterrupted run; none good stops it with exit 2 and what to do; a full disk
stops it with one line naming the file and the errno, and no partial folder left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from scaling.train import checkpoint as ckpt

pytestmark = pytest.mark.integration


def command(out, synth):
    return [sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(out), "--quiet",
            f"data.cache_dir={synth}", "data.synth_samples=256", "data.shuffle_buffer=32", "train.batch_size=16",
            "train.samples=96", "train.ckpt_every=2", "train.keep_checkpoints=0", "eval.max_samples=16"]


def run(out, synth, wrap=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([*wrap, *command(out, synth)], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run that kept every checkpoint (steps 2 and 4, then final/)."""
    root = tmp_path_factory.mktemp("ckpt-faults")
    out = run(root / "whole", root / "synth")
    assert out.returncode == 0, out.stderr[-2000:]
    return root


def interrupted(whole, tmp_path):
    """The whole run as if it had been killed after step 4: final/ gone."""
    out = tmp_path / "stage"
    shutil.copytree(whole / "whole", out)
    shutil.rmtree(out / "final")
    return out


def overwrite(path, size=4096):
    with open(path, "r+b") as f:  # bytes replaced in place: the size is unchanged
        f.seek(min(1000, path.stat().st_size - size))
        f.write(os.urandom(size))


def weights(path):
    return torch.load(path / "final" / ckpt.MODEL_FILE, weights_only=True)


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, "rank_0.pt", ckpt.STATE_FILE])
def test_a_corrupt_file_falls_back_to_the_checkpoint_before(whole, tmp_path, name):
    out = interrupted(whole, tmp_path)
    bad = out / "checkpoints" / "step_4" / name
    overwrite(bad, size=4096 if bad.stat().st_size > 8192 else 64)
    again = run(out, whole / "synth")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{bad} (step 4) fails its content hash" in again.stderr
    assert "resumed from" in again.stderr and "step_2 (step 2" in again.stderr
    a, b = weights(whole / "whole"), weights(out)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_no_good_checkpoint_exits_2_saying_what_to_do(whole, tmp_path):
    out = interrupted(whole, tmp_path)
    for step in (2, 4):
        overwrite(out / "checkpoints" / f"step_{step}" / ckpt.MODEL_FILE)
    again = run(out, whole / "synth")
    assert again.returncode == 2
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no good checkpoint in {out}: step_4 (model.pt), step_2 (model.pt)")
    assert "Restore them from a copy, or move them away" in last
    assert "Traceback" not in again.stderr


def test_a_full_disk_names_the_file_and_errno_and_leaves_no_partial_folder(whole, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mount = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=2m tmpfs "{small}" && exec "$0" "$@"']
    probe = subprocess.run([*mount, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs in a private mount namespace: {probe.stderr.strip()}")
    script = (f'mount -t tmpfs -o size=2m tmpfs "{small}" && "$0" "$@"; code=$?; '
              f'find "{small}" -name ".tmp-*" > "{tmp_path}/left"; exit $code')
    out = run(small / "stage", whole / "synth", wrap=["unshare", "-m", "sh", "-c", script])
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write checkpoint {small}/stage/checkpoints/step_2: {small}/stage/"
                           "checkpoints/.tmp-step_2/")
    assert "No space left on device (errno 28 ENOSPC); the partial checkpoint was removed" in line
    assert "Traceback" not in out.stderr
    assert (tmp_path / "left").read_text() == ""
