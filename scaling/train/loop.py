"""The training loop of a stage: setup, resume, steps, periodic evaluation and checkpoints."""

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
from timm.layers import PatchDropoutWithIndices
from tqdm.auto import tqdm

from scaling.batching import apply_auto_micro_batch, batch_layout
from scaling.config import Phase, stage_phases
from scaling.data.tokenizer import get_tokenizer
from scaling.data.transforms import normalize_on_device
from scaling.eval.cadence import eval_every_samples
from scaling.eval.runner import StageEvaluator
from scaling.kinds import stage_kind
from scaling.metrics import MetricLogger
from scaling.models import apply_overrides
from scaling.train import checkpoint as ckpt
from scaling.train import distributed as dist_utils
from scaling.train import integrity
from scaling.train.engine import DeepSpeedEngine, Engine
from scaling.train.errors import StageConfigError
from scaling.train.kinds import training_kind
from scaling.train.nonfinite import check_finite
from scaling.train.optim import CosineSchedule, build_optimizer, param_groups, tower_lrs
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


def phase_layout(batch: int, micro_batch: int | None, world: int, where: str = "train") -> tuple[int, int]:
    """(micro batch per process, accumulation steps) for a global batch of ``batch``."""
    micro, accum, divides = batch_layout(batch, world, micro_batch)
    if not divides:
        raise StageConfigError(
            f"{where}.batch_size={batch} is not a multiple of micro batch ({micro}) x processes ({world}); "
            f"set {where}.micro_batch or the batch size so that it divides")
    return micro, accum


def set_patch_dropout(module: torch.nn.Module, rate: float) -> None:
    """Set the patch dropout of every timm ``Eva`` trunk in ``module`` (a phase boundary)."""
    for sub in module.modules():
        if hasattr(sub, "patch_drop") and hasattr(sub, "num_prefix_tokens"):
            # None at 0, as a tower built without dropout: no module, no random numbers drawn
            sub.patch_drop = PatchDropoutWithIndices(rate, num_prefix_tokens=sub.num_prefix_tokens) \
                if rate > 0 else None


class TrainingLoop:
    """One stage's training loop; `scaling.train.stage.run_stage` sets up the process and runs it."""

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
                                              self._where(0))
        self.step = 0
        self.samples_seen = 0
        self.metrics: dict[str, float] = {}
        built = self.description.tower(stage_rung(cfg))
        # the size the towers are built at; a phase may run at another (checked before any build)
        self.base_image_size = built.image_size
        self._check_phase_sizes(built.patch_size)
        self.engine: Engine | None = None

        seed_all(cfg.train.seed)  # identical initial weights on every rank
        self.module, self.teacher, info = self.training.build(device)
        self.rung = info["rung"]
        spec = self.description.tower(self.rung)
        self.image_size, self.grid = spec.image_size, spec.grid  # the size the towers run at now
        self.teacher_image_size = info.get("teacher_image_size")
        self.teacher_spec = info.get("teacher_spec")
        self._move_towers(self._phase_size(self.phase))  # a first phase may set its own size
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
                    f"{self._phase_size(p)} px)"
                    for p in self.phases))
        self.evaluator = self._evaluator()
        # Per-rank randomness (drop path, patch dropout) after the shared init.
        seed_all(cfg.train.seed + 1_000_003 * self.rank)

    # -- phases ------------------------------------------------------------------------------
    def _where(self, index: int) -> str:
        return f"phases[{index}]" if self.cfg.phases else "train"

    def _phase_size(self, phase: Phase) -> int:
        return phase.image_size or self.base_image_size

    def _check_phase_sizes(self, patch: int) -> None:
        first = self._phase_size(self.phases[0])  # the size the engine starts at
        for phase in self.phases:
            size, key = self._phase_size(phase), f"{self._where(phase.index)}.image_size"
            if size % patch:
                raise StageConfigError(f"{key}={size} is not a multiple of the tower's patch size ({patch})")
            if size != first and self.cfg.distributed.deepspeed:
                raise StageConfigError(
                    f"{key}={size}: a phase that changes the image size ({first} -> {size}) runs "
                    "without DeepSpeed (distributed.deepspeed=false; DDP on several processes): DeepSpeed "
                    "keeps the weights and optimizer state in flat buffers sized when its engine starts, "
                    "which the resampled position table no longer fits. Or run the new size as its own "
                    "clip stage (data.image_size, inputs.init_vision/init_text from this one)")

    def _evaluator(self) -> StageEvaluator:
        return StageEvaluator(self.cfg, self.sources, self.image_size, self.grid, self.tokenizer,
                              self.device, self.training.evaluate, self.teacher, self.teacher_image_size)

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

    def _set_image_size(self, size: int) -> None:
        """Train and evaluate at ``size`` from now on (a phase boundary, or a resume into a phase)."""
        if self._move_towers(size):
            self.engine.params_changed()
            self.evaluator = self._evaluator()

    def _phase_at(self, step: int) -> Phase:
        """The phase that optimiser step ``step`` (0-based, about to be taken) belongs to."""
        return next((p for p, end in zip(self.phases, self.phase_ends, strict=True) if step < end),
                    self.phases[-1])

    def _stream(self, index: int):
        # each phase draws its own data order (the seed moves with the phase), so a later phase
        # does not replay the first one's samples
        return train_stream(self.cfg, self.sources.train, self.image_size, self.grid, self.tokenizer,
                            self.micro, self.rank, self.world, seed_offset=index)

    def _enter_phase(self, phase: Phase) -> None:
        """Switch to ``phase``: batch layout, patch dropout, image size and a new data stream."""
        self.phase = phase
        self._set_image_size(self._phase_size(phase))
        self.micro, self.accum = phase_layout(phase.batch_size, phase.micro_batch, self.world,
                                              self._where(phase.index))
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

    # -- checkpoints ---------------------------------------------------------------------------
    def resume(self) -> Path | None:
        # a checkpoint that fails its content hash or does not read back: the one before it
        loaded = ckpt.load_newest_good(self.out, self.rank, self._load, dist_utils.any_true)
        if loaded is None:
            return None
        found, manifest = loaded
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
        self._set_image_size(int(manifest.get("image_size") or
                                 self._phase_size(self.phases[int(manifest.get("phase", 0))])))
        self.engine.load(found, step)
        self.step, self.samples_seen = int(manifest["step"]), int(manifest["samples_seen"])
        phase = self._phase_at(self.step)
        if phase.index != self.phase.index:
            self._enter_phase(phase)
        if state is not None:
            ckpt.set_rng_state(state["rng"])
            # saved at the last step of the phase before: this phase's stream starts fresh
            if int(state.get("phase", 0)) == phase.index:
                self.stream.load_state_dict(state["stream"])
        else:
            log.warning("resuming %s saved by %s processes on %s: data order and RNG streams restart",
                        found, manifest.get("world_size"), self.world)

    def save(self, target: Path, final: bool = False) -> Path:
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
        every = eval_every_samples(cfg)
        bar = _progress(self.total_steps, self.step, f"{self.cfg.stage.name}", self.rank == 0)
        window_loss, window_steps, grad_norm = 0.0, 0, float("nan")
        tick = time.perf_counter()
        while self.step < self.total_steps:
            phase = self._phase_at(self.step)
            if phase.index != self.phase.index:
                self._enter_phase(phase)
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
            if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                self._log_train(window_loss, window_steps, grad_norm, time.perf_counter() - tick)
                bar.set_postfix(loss=f"{self.metrics['train/loss']:.4f}")
                window_loss, window_steps = 0.0, 0
                tick = time.perf_counter()
            paused = time.perf_counter()
            if every and self.samples_seen // every > (self.samples_seen - self.phase.batch_size) // every \
                    and self.step < self.total_steps:
                self.evaluate()
            if cfg.train.ckpt_every and self.step % cfg.train.ckpt_every == 0 and self.step < self.total_steps:
                self.save(self.out / "checkpoints" / f"step_{self.step}")
            tick += time.perf_counter() - paused  # eval and checkpoints do not count as training time
        bar.close()
        self.evaluate()
        path = self.save(self.out / "final", final=True)
        return StageResult("finished", self.step, self.samples_seen, dict(self.metrics), str(path), str(self.out))


def _progress(total: int, initial: int, desc: str, enabled: bool):
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr,
                disable=not enabled or not sys.stderr.isatty(), dynamic_ncols=True)
