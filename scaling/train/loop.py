"""The training loop of a stage: setup, resume, steps, periodic evaluation and checkpoints.

``TrainingLoop.run`` reads top to bottom; what it leans on lives beside it: the phases
(``train.phases``), when to log, evaluate and checkpoint (``train.cadence``), what a checkpoint
holds and how a resume reads it back (``train.loop_checkpoints``), and the stage kind's model,
loss and evaluation (``train.kinds``)."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from scaling.batching import apply_auto_micro_batch
from scaling.config import Phase, stage_phases
from scaling.data.tokenizer import get_tokenizer
from scaling.data.transforms import normalize_on_device
from scaling.eval.runner import StageEvaluator
from scaling.kinds import stage_kind
from scaling.metrics import MetricLogger
from scaling.models import apply_overrides
from scaling.train import checkpoint as ckpt
from scaling.train import distributed as dist_utils
from scaling.train.cadence import Cadence
from scaling.train.engine import DeepSpeedEngine, Engine
from scaling.train.kinds import training_kind
from scaling.train.loop_checkpoints import LoopCheckpoints
from scaling.train.nonfinite import check_finite
from scaling.train.optim import CosineSchedule, build_optimizer, param_groups, tower_lrs
from scaling.train.phases import check_phase_sizes, phase_at, phase_key, phase_layout, set_patch_dropout
from scaling.train.resize import set_teacher_grid, set_tower_image_size
from scaling.train.result import StageResult
from scaling.train.stage_data import resolve_sources, train_stream
from scaling.train.stage_models import stage_rung
from scaling.train.throughput import flops_per_sample, peak_flops

log = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingLoop(LoopCheckpoints):
    """One stage's training loop; `scaling.train.stage.run_stage` sets up the process and runs it.
    ``resume`` and ``save`` are its checkpoint half, ``LoopCheckpoints``."""

    def __init__(self, cfg: DictConfig, device: torch.device, logger: MetricLogger,
                 stop_requested=None) -> None:
        self.cfg = cfg
        self.device = device
        self.logger = logger
        self.stop_requested = stop_requested
        self.rank, self.world = dist_utils.world()
        self.out = Path(cfg.out_dir)
        self.kind = cfg.stage.kind
        # what the kind is (torch-free: towers, metrics, inputs) and how it trains (model, loss, eval)
        self.description = stage_kind(self.kind)
        self.training = training_kind(self.kind)(cfg, self.rank, self.world)
        note = apply_auto_micro_batch(cfg)  # a stage started on its own: the planner's rule
        if note:
            log.warning(note)
        # Phases: consecutive step ranges of one stage; the lr schedule runs over all of them.
        self.phases = stage_phases(cfg)
        self.phase_ends = list(np.cumsum([p.steps for p in self.phases]))
        self.total_steps = int(self.phase_ends[-1])
        self.phase = self.phases[0]
        self.micro, self.accum = phase_layout(self.phase.batch_size, self.phase.micro_batch, self.world,
                                              phase_key(cfg, 0))
        self.step = 0
        self.samples_seen = 0
        self.metrics: dict[str, float] = {}
        built = self.description.tower(stage_rung(cfg))
        # the size the towers are built at; a phase may run at another (checked before any build)
        self.base_image_size = built.image_size
        check_phase_sizes(cfg, self.phases, self.base_image_size, built.patch_size)
        self.engine: Engine | None = None

        seed_all(cfg.train.seed)  # identical initial weights on every rank
        self.module, self.teacher, info = self.training.build(device)
        self.rung = info["rung"]
        spec = self.description.tower(self.rung)
        self.image_size, self.grid = spec.image_size, spec.grid  # the size the towers run at now
        self.teacher_image_size = info.get("teacher_image_size")
        self.teacher_spec = info.get("teacher_spec")
        self._move_towers(self.phase_size(self.phase))  # a first phase may set its own size
        self.engine = self._engine()
        if cfg.train.compile:
            self.engine.compile()  # compiles at the first step; evaluation runs the eager module
        self.tokenizer = get_tokenizer(self.rung.text.context_length) if self.rung.text else None
        # the synthetic world at the rung's size whatever the phases: the transforms resize to theirs
        self.sources = resolve_sources(cfg, self.base_image_size, progress=self.rank == 0)
        self.stream = self._stream(0)
        self.flops_per_sample = flops_per_sample(self.kind, self.rung, self.phase.patch_dropout,
                                                 cfg.loss.mask_ratio, self.teacher_spec)
        self.peak, self.peak_source = peak_flops(cfg.train.peak_flops, device, cfg.resources.gpu)
        if self.rank == 0:
            log.info("%s: %d steps of %d (%d per process x %d accumulation x %d processes); MFU against "
                     "%.3g FLOP/s per process (%s)", cfg.stage.name, self.total_steps, self.phase.batch_size,
                     self.micro, self.accum, self.world, self.peak, self.peak_source)
            if len(self.phases) > 1:
                log.info("%s: phases %s", cfg.stage.name, ", ".join(
                    f"{p.name} ({p.steps} steps of {p.batch_size}, patch dropout {p.patch_dropout}, "
                    f"{self.phase_size(p)} px)"
                    for p in self.phases))
        self.evaluator = self._evaluator()
        # Per-rank randomness (drop path, patch dropout) after the shared init.
        seed_all(cfg.train.seed + 1_000_003 * self.rank)

    # -- phases ------------------------------------------------------------------------------
    def phase_size(self, phase: Phase) -> int:
        return phase.size(self.base_image_size)

    def phase_at(self, step: int) -> Phase:
        return phase_at(self.phases, self.phase_ends, step)

    def _evaluator(self) -> StageEvaluator:
        return StageEvaluator(self.cfg, self.sources, self.image_size, self.grid, self.tokenizer, self.device,
                              self.training.evaluate, self.teacher, self.teacher_image_size)

    def _move_towers(self, size: int) -> bool:
        """Run the towers at ``size``: the trained tower's position table (and its optimizer
        moments, once there is an optimizer) resampled, RoPE rebuilt, the teacher fed the matching
        size. True if the size changed."""
        tower = self.training.trained_tower(self.module)
        old = self.image_size
        optimizer = self.engine.client_optimizer if self.engine is not None else None
        if not set_tower_image_size(tower, size, optimizer):
            return False
        self.image_size, self.grid = size, tower.spec.grid
        self.rung = apply_overrides(self.rung, {"image_size": size})
        if self.teacher is not None:
            set_teacher_grid(self.teacher, self.grid)
            self.teacher_image_size, self.teacher_spec = self.teacher.spec.image_size, self.teacher.spec
        if self.rank == 0:
            log.info("%s: image size %d -> %d (a %dx%d grid): position table%s resampled", self.cfg.stage.name,
                     old, size, self.grid, self.grid, " and its moments" if optimizer else "")
        return True

    def set_image_size(self, size: int) -> None:
        """Train and evaluate at ``size`` from now on (a phase boundary, or a resume into a phase)."""
        if self._move_towers(size):
            self.engine.params_changed()
            self.evaluator = self._evaluator()

    def _stream(self, index: int):
        # each phase draws its own data order (the seed moves with the phase), so a later phase
        # does not replay the first one's samples
        return train_stream(self.cfg, self.sources.train, self.image_size, self.grid, self.tokenizer,
                            self.micro, self.rank, self.world, seed_offset=index)

    def enter_phase(self, phase: Phase) -> None:
        """Switch to ``phase``: batch layout, patch dropout, image size and a new data stream."""
        self.phase = phase
        self.set_image_size(self.phase_size(phase))
        self.micro, self.accum = phase_layout(phase.batch_size, phase.micro_batch, self.world,
                                              phase_key(self.cfg, phase.index))
        self.engine.set_batch(phase.batch_size, self.micro, self.accum)
        if self.description.patch_dropout:
            set_patch_dropout(self.module, phase.patch_dropout)
        self.stream = self._stream(phase.index)
        self.flops_per_sample = flops_per_sample(self.kind, self.rung, phase.patch_dropout,
                                                 self.cfg.loss.mask_ratio, self.teacher_spec)
        if self.rank == 0:
            log.info("%s: phase %d/%d '%s' from step %d: %d steps of %d, patch dropout %s, %d px",
                     self.cfg.stage.name, phase.index + 1, len(self.phases), phase.name, self.step,
                     phase.steps, phase.batch_size, phase.patch_dropout, self.image_size)

    # -- setup -------------------------------------------------------------------------------
    def _engine(self) -> Engine:
        cfg = self.cfg
        towers, extra = self.training.towers(self.module)
        groups = param_groups(towers, extra=extra)
        optimizer = build_optimizer(cfg.optim.name, groups, cfg.optim.betas, cfg.optim.eps, cfg.optim)
        warmup = math.ceil(cfg.optim.warmup_samples / self.phases[0].batch_size)
        schedule = CosineSchedule(optimizer, self.total_steps, warmup, cfg.optim.min_lr)
        if cfg.distributed.deepspeed:
            return DeepSpeedEngine(self.module, optimizer, schedule, cfg, self.micro, self.accum, self.device,
                                   batch_size=self.phase.batch_size)
        return Engine(self.module, optimizer, schedule, cfg.optim.grad_clip, cfg.train.precision,
                      self.device, self.world)

    # -- steps ---------------------------------------------------------------------------------
    def micro_loss(self, batch: dict) -> torch.Tensor:
        images = normalize_on_device(batch["image"], self.device)  # the stream ships uint8
        return self.training.loss(self, self.engine.model, images, batch)

    def train_step(self, batches) -> tuple[float, float]:
        total = torch.zeros((), dtype=torch.float64)
        for i in range(self.accum):
            batch = next(batches)
            with self.engine.micro_context(i == self.accum - 1), self.engine.autocast():
                loss = self.micro_loss(batch)
            self.engine.backward(loss, self.accum)
            total += loss.detach().double().cpu()
        self.step_lrs = tower_lrs(self.engine.client_optimizer)  # the lrs this step used
        grad_norm = self.engine.step()
        return float(total) / self.accum, grad_norm

    def _stop(self) -> bool:
        return self.stop_requested is not None and dist_utils.any_true(bool(self.stop_requested()))

    def _log_train(self, window_loss: float, window_steps: int, grad_norm: float, elapsed: float) -> None:
        loss, skipped = dist_utils.mean([window_loss / max(1, window_steps),
                                         float(self.stream.stats().get("skipped", 0))])
        samples_per_s = window_steps * self.phase.batch_size / max(elapsed, 1e-9)
        flops_per_s = samples_per_s * self.flops_per_sample
        metrics = {"train/loss": loss, "train/grad_norm": grad_norm, "train/samples_seen": self.samples_seen,
                   "train/samples_per_s": samples_per_s, "train/flops_per_s": flops_per_s,
                   "train/mfu": flops_per_s / (self.peak * self.world), "train/skipped_samples": skipped * self.world,
                   "train/step": self.step, "train/phase": self.phase.index}
        metrics |= {f"train/lr/{k}": v for k, v in self.step_lrs.items()}
        metrics |= self.training.train_metrics(self.module)
        self.metrics.update(metrics)
        self.logger.log_metrics(metrics, step=self.step)

    def evaluate(self) -> None:
        results = self.evaluator(self.engine.module, self.rank, self.engine.deepspeed and
                                 self.cfg.distributed.zero_stage == 3)
        if self.rank == 0 and results:
            self.metrics.update(results)
            self.logger.log_metrics(results, step=self.step)

    def run(self) -> StageResult:
        cfg = self.cfg
        self.resume()
        batches = iter(self.stream)
        due = Cadence(cfg, self.total_steps)
        bar = _progress(self.total_steps, self.step, f"{self.cfg.stage.name}", self.rank == 0)
        window_loss, window_steps, grad_norm = 0.0, 0, float("nan")
        tick = time.perf_counter()
        while self.step < self.total_steps:
            phase = self.phase_at(self.step)
            if phase.index != self.phase.index:
                self.enter_phase(phase)
                batches = iter(self.stream)
            if self._stop():
                target = self.out / "checkpoints" / f"step_{self.step}"
                # a periodic checkpoint of this very step already holds this state
                path = target if ckpt.is_complete(target) else self.save(target)
                bar.close()
                return StageResult("preempted", self.step, self.samples_seen, dict(self.metrics), str(path),
                                   str(self.out))
            self.module.train()
            loss, grad_norm = self.train_step(batches)
            self.step += 1
            check_finite(loss, grad_norm, self.step, self.out,
                         check_norm=not self.engine.deepspeed and self.cfg.train.precision != "fp16")
            self.samples_seen += self.phase.batch_size
            window_loss += loss
            window_steps += 1
            bar.update(1)
            if due.log(self.step):
                self._log_train(window_loss, window_steps, grad_norm, time.perf_counter() - tick)
                bar.set_postfix(loss=f"{self.metrics['train/loss']:.4f}")
                window_loss, window_steps = 0.0, 0
                tick = time.perf_counter()
            paused = time.perf_counter()
            if due.evaluate(self.step, self.samples_seen, self.phase.batch_size):
                self.evaluate()
            if due.checkpoint(self.step):
                self.save(self.out / "checkpoints" / f"step_{self.step}")
            tick += time.perf_counter() - paused  # eval and checkpoints do not count as training time
        bar.close()
        self.evaluate()
        path = self.save(self.out / "final", final=True)
        return StageResult("finished", self.step, self.samples_seen, dict(self.metrics), str(path), str(self.out))


def _progress(total: int, initial: int, desc: str, enabled: bool):
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr,
                disable=not enabled or not sys.stderr.isatty(), dynamic_ncols=True)
