"""The checkpoint half of a training loop: what a checkpoint holds (the weights, the engine's
optimizer state, each rank's RNG and data position, a manifest) and how a loop resumes from the
newest one that reads back (``scaling.train.checkpoint`` writes, verifies and prunes the folders).
``TrainingLoop`` (``train/loop.py``) inherits it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from scaling.config import Phase
from scaling.metrics import MetricLogger
from scaling.train import checkpoint as ckpt
from scaling.train import distributed as dist_utils
from scaling.train import integrity
from scaling.train.engine import Engine

log = logging.getLogger(__name__)


class LoopCheckpoints:
    """Saves and resumes a ``TrainingLoop``: the state below, which the loop sets, and its phase
    moves (``set_image_size``, ``phase_size``, ``phase_at``, ``enter_phase``) on a resume."""

    # the loop's state a checkpoint saves and a resume restores
    cfg: DictConfig
    out: Path
    kind: str
    rank: int
    world: int
    step: int
    samples_seen: int
    phase: Phase
    phases: list[Phase]
    image_size: int
    metrics: dict[str, float]
    engine: Engine
    stream: Any
    logger: MetricLogger

    def resume(self) -> Path | None:
        """Load the newest good checkpoint of the stage; None when there is none."""
        # a checkpoint that fails its content hash or does not read back: the one before it
        loaded = ckpt.load_newest_good(self.out, self.rank, self._load, dist_utils.any_true)
        if loaded is None:
            return None
        found, _ = loaded
        if self.rank == 0:
            log.info("resumed from %s (step %d, %d samples)", found, self.step, self.samples_seen)
        return found

    def _load(self, found: Path, manifest: dict) -> None:
        step = manifest.get("step")
        rank_file = found / f"rank_{self.rank}.pt"
        same_world = manifest.get("world_size") == self.world and rank_file.is_file()
        # read before anything changes, so that a bad file leaves the loop as it was
        state = integrity.load(rank_file, step, map_location="cpu", weights_only=False) if same_world else None
        # the weights are at the size of the phase the checkpoint was saved in
        self.set_image_size(int(manifest.get("image_size") or
                                self.phase_size(self.phases[int(manifest.get("phase", 0))])))
        self.engine.load(found, step)
        self.step, self.samples_seen = int(manifest["step"]), int(manifest["samples_seen"])
        phase = self.phase_at(self.step)
        if phase.index != self.phase.index:
            self.enter_phase(phase)
        if state is not None:
            ckpt.set_rng_state(state["rng"])
            # saved at the last step of the phase before: this phase's stream starts fresh
            if int(state.get("phase", 0)) == phase.index:
                self.stream.load_state_dict(state["stream"])
        else:
            log.warning("resuming %s saved by %s processes on %s: data order and RNG streams restart",
                        found, manifest.get("world_size"), self.world)

    def save(self, target: Path, final: bool = False) -> Path:
        """Checkpoint the loop into ``target`` (every rank takes part); older periodic ones pruned."""
        full = self.engine.full_state_dict()
        manifest = {"kind": self.kind, "rung": self.cfg.stage.rung, "proxy": self.cfg.stage.proxy,
                    "step": self.step, "samples_seen": self.samples_seen, "world_size": self.world,
                    "deepspeed": self.engine.deepspeed, "final": final, "phase": self.phase.index,
                    "image_size": self.image_size,
                    "metrics": self.metrics if final else {}}
        rank_state = {"rng": ckpt.rng_state(), "stream": self.stream.state_dict(), "phase": self.phase.index}
        if self.rank == 0:
            self.logger.sync()  # a complete checkpoint has its metrics on disk (train.spool)
        path = ckpt.save(target, self.rank, dist_utils.barrier,
                         write_shared=lambda book: book.save(full, book.root / ckpt.MODEL_FILE),
                         rank_state=rank_state, manifest=manifest,
                         write_collective=lambda book: self.engine.save(book, self.rank),
                         agree=dist_utils.any_true, world=self.world)
        if self.rank == 0 and not final:
            ckpt.prune(self.out, self.cfg.train.keep_checkpoints)
        return path
