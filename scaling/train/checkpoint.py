"""Stage checkpoints: atomic directories with a manifest written last.

Layout of one checkpoint (``<out>/checkpoints/step_<N>/`` or ``<out>/final/``)::

    model.pt            full model state dict (consolidated, fp32) - what downstream stages load
    train_state.pt      optimizer, schedule, grad scaler (plain torch runs)
    deepspeed/          the DeepSpeed engine's own checkpoint (DeepSpeed runs)
    rank_<r>.pt         per-rank RNG states (python, numpy, torch) and data stream position
    manifest.json       step, samples seen, world size, phase, the image size the weights are at,
                        files and sizes - written last

All ranks write into ``.tmp-<name>``; rank 0 writes the manifest and renames the folder, so a
reader sees either a complete checkpoint or none. A folder without a valid manifest, or whose
files do not match it, is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from scaling.stage_state import FINAL_DIR, MANIFEST, read_manifest
from scaling.train.errors import CheckpointError
from scaling.train.integrity import (
    DIGESTS_KEY,
    CheckpointCorrupt,
    DigestBook,
    files_loaded_by,
    gather_digests,
    verify,
    write_error,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def is_complete(path: str | os.PathLike) -> bool:
    return read_manifest(path) is not None


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete periodic checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if not match or not child.is_dir():
            continue
        if is_complete(child):
            found.append((int(match.group(1)), child))
        else:
            log.warning("ignoring incomplete checkpoint %s (no valid %s)", child, MANIFEST)
    return [p for _, p in sorted(found)]


def final_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    final = Path(out_dir) / FINAL_DIR
    return final if final.is_dir() and is_complete(final) else None


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a stage folder (``final/`` wins), or None."""
    final = final_checkpoint(out_dir)
    if final is not None:
        return final
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _file_sizes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    target: str | os.PathLike,
    rank: int,
    barrier: Callable[[], None],
    write_shared: Callable[[DigestBook], None],
    rank_state: Mapping[str, Any],
    manifest: Mapping[str, Any],
    write_collective: Callable[[DigestBook], None] | None = None,
    agree: Callable[[bool], bool] = bool,
    world: int = 1,
) -> Path:
    """Write a checkpoint atomically, with a content hash of every file in its manifest.

    ``write_shared(book)`` runs on rank 0 (model and optimizer files); ``write_collective(book)``
    on every rank (DeepSpeed's sharded save); ``rank_state`` goes to ``rank_<r>.pt``. Files are
    written with ``book.save(obj, book.root / name)``, which hashes them on the way.
    ``agree(flag)``: True on every rank if ``flag`` is True on any (an all-reduce) - a rank whose
    write failed (disk full, I/O error) makes all of them remove the folder and raise
    ``CheckpointWriteError`` with the path and errno.
    """
    target = Path(target)
    tmp = target.parent / f".tmp-{target.name}"
    failure: OSError | None = None
    if rank == 0:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as exc:
            failure = exc
    barrier()
    book = DigestBook(tmp)
    try:
        if failure is None:
            if write_collective is not None:
                write_collective(book)
            if rank == 0:
                write_shared(book)
            book.save(dict(rank_state), tmp / f"rank_{rank}.pt")
            book.dump(rank)
    except OSError as exc:
        failure = exc
    finally:
        book.close()
    if agree(failure is not None):
        barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(target, failure or OSError(0, "another rank failed to write its part"))
    barrier()
    if rank == 0:
        try:
            digests = gather_digests(tmp, world)
            data = dict(manifest) | {"created": time.time(), "files": _file_sizes(tmp), DIGESTS_KEY: digests}
            _write_json(tmp / MANIFEST, data)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            failure = exc
    if agree(failure is not None):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(target, failure or OSError(0, "rank 0 failed to write the manifest"))
    return target


def _write_json(path: Path, data: Mapping) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune(out_dir: str | os.PathLike, keep: int) -> None:
    """Keep the newest ``keep`` periodic checkpoints (0 or less keeps all); drop stale temp dirs."""
    root = Path(out_dir) / "checkpoints"
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if root.is_dir():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path | None:
    """One of our checkpoint dirs, given it, a stage dir (``final/`` or newest step) or None."""
    path = Path(path)
    if is_complete(path):
        return path
    if path.is_dir():
        return latest_checkpoint(path)
    return None


def load_model_state(path: str | os.PathLike, key: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Model weights from one of our checkpoints (``final/``, ``step_N/`` or a stage dir), or from
    a plain ``.pt``/``.pth``/``.bin``/``.safetensors`` state dict file (``state_dict``/``model``/
    ``module`` wrappers are unwrapped). ``key`` names the config entry in errors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{key}: checkpoint not found: {path}")
    if path.is_dir():
        ckpt = resolve_checkpoint_dir(path)
        if ckpt is None:
            raise CheckpointError(
                f"{key}: {path} holds no complete checkpoint (expected a stage folder with final/ or "
                f"checkpoints/step_N/, or a checkpoint folder with {MANIFEST})")
        path = ckpt / MODEL_FILE
        try:
            verify(ckpt, read_manifest(ckpt) or {}, [MODEL_FILE])
        except CheckpointCorrupt as exc:
            raise CheckpointError(f"{key}: {exc}; train that stage again (or restore the file)") from None
    if path.suffix == ".safetensors":
        return _strip_prefixes(load_file(str(path)))
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise CheckpointError(f"{key}: {path} is not a state dict file ({', '.join(STATE_DICT_SUFFIXES)})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors: say which file
        raise CheckpointError(f"{key}: cannot read {path}: {exc}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{key}: {path} does not hold a state dict of tensors")
    return _strip_prefixes(state)


def checkpoints_newest_first(out_dir: str | os.PathLike) -> list[Path]:
    """``final/`` (if complete), then the periodic checkpoints, newest first."""
    final = final_checkpoint(out_dir)
    return ([final] if final is not None else []) + list_checkpoints(out_dir)[::-1]


def load_newest_good(out_dir: str | os.PathLike, rank: int,
                     load: Callable[[Path, dict], None],
                     agree: Callable[[bool], bool] = bool) -> tuple[Path, dict] | None:
    """Load the newest checkpoint whose files this rank loads pass their content hash and read
    back (``load(path, manifest)`` raises ``CheckpointCorrupt`` otherwise), falling back one
    checkpoint at a time; every rank takes the same one (``agree``: any rank's failure counts).
    None when the stage has no checkpoint; ``CheckpointError`` when none of them is good."""
    bad: list[str] = []
    for path in checkpoints_newest_first(out_dir):
        manifest = read_manifest(path) or {}
        problem: CheckpointCorrupt | None = None
        try:
            verify(path, manifest, files_loaded_by(manifest, rank))
        except CheckpointCorrupt as exc:
            problem = exc
        if not agree(problem is not None):
            try:
                load(path, manifest)
            except CheckpointCorrupt as exc:
                problem = exc
            if not agree(problem is not None):
                return path, manifest
        what = str(problem) if problem is not None else f"{path}: another rank's files are bad"
        log.warning("%s; falling back to the checkpoint before it", what)
        bad.append(f"{path.name} ({problem.path.name if problem is not None else 'another rank'})")
    if bad:
        raise CheckpointError(
            f"no good checkpoint in {out_dir}: {', '.join(bad)} failed their content hash or cannot be "
            "read. Restore them from a copy, or move them away to train the stage from the start")
    return None
