"""A training loop's checkpoints: what a checkpoint holds (the weights, the engine's optimizer
state, each rank's RNG and data position, a manifest) and how a loop resumes from the newest one
that reads back (``scaling.train.checkpoint`` writes, verifies and prunes the folders)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from scaling.train import checkpoint as ckpt
from scaling.train import distributed as dist_utils
from scaling.train import integrity

if TYPE_CHECKING:
    from scaling.train.loop import TrainingLoop

log = logging.getLogger(__name__)


def resume(loop: TrainingLoop) -> Path | None:
    """Load the newest good checkpoint of ``loop``'s stage into it; None when there is none."""
    # a checkpoint that fails its content hash or does not read back: the one before it
    loaded = ckpt.load_newest_good(loop.out, loop.rank, lambda found, manifest: _load(loop, found, manifest),
                                   dist_utils.any_true)
    if loaded is None:
        return None
    found, _ = loaded
    if loop.rank == 0:
        log.info("resumed from %s (step %d, %d samples)", found, loop.step, loop.samples_seen)
    return found


def _load(loop: TrainingLoop, found: Path, manifest: dict) -> None:
    step = manifest.get("step")
    rank_file = found / f"rank_{loop.rank}.pt"
    same_world = manifest.get("world_size") == loop.world and rank_file.is_file()
    # read before anything changes, so that a bad file leaves the loop as it was
    state = integrity.load(rank_file, step, map_location="cpu", weights_only=False) if same_world else None
    # the weights are at the size of the phase the checkpoint was saved in
    loop.set_image_size(int(manifest.get("image_size") or
                            loop.phase_size(loop.phases[int(manifest.get("phase", 0))])))
    loop.engine.load(found, step)
    loop.step, loop.samples_seen = int(manifest["step"]), int(manifest["samples_seen"])
    phase = loop.phase_at(loop.step)
    if phase.index != loop.phase.index:
        loop.enter_phase(phase)
    if state is not None:
        ckpt.set_rng_state(state["rng"])
        # saved at the last step of the phase before: this phase's stream starts fresh
        if int(state.get("phase", 0)) == phase.index:
            loop.stream.load_state_dict(state["stream"])
    else:
        log.warning("resuming %s saved by %s processes on %s: data order and RNG streams restart",
                    found, manifest.get("world_size"), loop.world)


def save(loop: TrainingLoop, target: Path, final: bool = False) -> Path:
    """Checkpoint ``loop`` into ``target`` (every rank takes part); older periodic ones pruned."""
    full = loop.engine.full_state_dict()
    manifest = {"kind": loop.kind, "rung": loop.cfg.stage.rung, "proxy": loop.cfg.stage.proxy,
                "step": loop.step, "samples_seen": loop.samples_seen, "world_size": loop.world,
                "deepspeed": loop.engine.deepspeed, "final": final, "phase": loop.phase.index,
                "image_size": loop.image_size,
                "metrics": loop.metrics if final else {}}
    rank_state = {"rng": ckpt.rng_state(), "stream": loop.stream.state_dict(), "phase": loop.phase.index}
    if loop.rank == 0:
        loop.logger.sync()  # a complete checkpoint has its metrics on disk (train.spool)
    path = ckpt.save(target, loop.rank, dist_utils.barrier,
                     write_shared=lambda book: book.save(full, book.root / ckpt.MODEL_FILE),
                     rank_state=rank_state, manifest=manifest,
                     write_collective=lambda book: loop.engine.save(book, loop.rank),
                     agree=dist_utils.any_true, world=loop.world)
    if loop.rank == 0 and not final:
        ckpt.prune(loop.out, loop.cfg.train.keep_checkpoints)
    return path
