"""One interface over the three ways a stage steps its model: plain torch (1 process), DDP
(N processes) and DeepSpeed (ZeRO 0-3). The loop calls ``forward``-side code on ``model``,
then ``backward`` per micro-batch and ``step`` per optimiser step."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from scaling.train import integrity
from scaling.train.errors import StageSetupError
from scaling.train.integrity import DigestBook
from scaling.train.lamb import Lamb
from scaling.train.optim import CosineSchedule
from scaling.train.zero_layout import ZeroLayoutError, shard_lamb

DS_TAG = "state"


def check_combination(cfg: DictConfig) -> None:
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise StageSetupError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Engine:
    """Plain torch / DDP stepping. ``model`` is what to call, ``module`` the bare model."""

    deepspeed = False

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, schedule: CosineSchedule,
                 grad_clip: float | None, precision: str, device: torch.device, world_size: int) -> None:
        self.module = module
        self.optimizer = optimizer
        self.client_optimizer = optimizer
        self.schedule = schedule
        self.grad_clip = grad_clip
        self.precision = precision
        self.device = device
        self.model: nn.Module = module
        self.ddp: DistributedDataParallel | None = None
        self.compiled = False
        if world_size > 1:
            self._wrap_ddp()
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def _wrap_ddp(self) -> None:
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = self.ddp = DistributedDataParallel(self.module, device_ids=ids, broadcast_buffers=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def compile(self) -> None:
        """Compile the forward (and so the backward) with ``torch.compile``; the weights stay in
        ``module``, so checkpoints and evaluation are unchanged."""
        self.model = torch.compile(self.model)
        self.compiled = True

    def params_changed(self) -> None:
        """A parameter was replaced (a phase's image size resampled the position table): DDP's
        gradient buckets and a compiled graph hold the old one, so both are built again."""
        if self.ddp is not None:
            self._wrap_ddp()
        if self.compiled:
            self.model = torch.compile(self.ddp if self.ddp is not None else self.module)

    def set_batch(self, batch: int, micro: int, accum: int) -> None:
        """A new batch layout (a stage phase); the loop itself runs the accumulation here."""

    def micro_context(self, last: bool) -> contextlib.AbstractContextManager:
        """No gradient all-reduce before the last micro-batch of an optimiser step."""
        if self.ddp is not None and not last:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        self.scaler.scale(loss / accum).backward()

    def step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        limit = self.grad_clip if self.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        return float(norm)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (call on every rank; meaningful on rank 0)."""
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def save(self, book: DigestBook, rank: int) -> None:
        if rank == 0:
            book.save({"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                       "scaler": self.scaler.state_dict()}, book.root / "train_state.pt")

    def load(self, ckpt: Path, step: int | None = None) -> None:
        weights = integrity.load(ckpt / "model.pt", step, map_location=self.device, weights_only=True)
        state = integrity.load(ckpt / "train_state.pt", step, map_location=self.device, weights_only=False)
        self.module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])


class DeepSpeedEngine(Engine):
    """DeepSpeed with our own (client) optimizer: its fused LAMB is CUDA-only. Under ZeRO our
    LAMB is told where each parameter lies in the partitions, keeping its per-parameter ratios."""

    deepspeed = True

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, schedule: CosineSchedule,
                 cfg: DictConfig, micro_batch: int, accum: int, device: torch.device,
                 batch_size: int | None = None) -> None:
        # deepspeed takes ~2.4 s to import: only for the stages that use it
        import deepspeed

        self.module_ref = module
        self.schedule = schedule
        self.precision = cfg.train.precision
        self.device = device
        self.zero_stage = cfg.distributed.zero_stage
        config = {
            "train_batch_size": batch_size or cfg.train.batch_size,
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": accum,
            "gradient_clipping": float(cfg.optim.grad_clip or 0.0),
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        # DeepSpeed (0.19) broadcasts and partitions parameters through uint8 views, which a 0-dim
        # tensor cannot give (CLIP's logit_scale): such parameters are 1-element vectors under
        # DeepSpeed, and 0-dim again in the weights it hands out (``full_state_dict``).
        self.scalars = {name for name, p in module.named_parameters() if p.dim() == 0}
        for name in self.scalars:
            param = module.get_parameter(name)
            param.data = param.data.view(1)
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                config=config)
        self.module = self.model.module
        self.client_optimizer = optimizer
        if isinstance(optimizer, Lamb) and self.zero_stage >= 1:
            try:
                shard_lamb(optimizer, self.optimizer, self.zero_stage)
            except ZeroLayoutError as exc:
                raise StageSetupError(str(exc)) from None

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed casts the model itself for bf16/fp16

    def compile(self) -> None:
        self.model.compile()  # DeepSpeed's own: compiles the module inside its hooks

    def params_changed(self) -> None:
        # its flat fp32 buffers (and ZeRO partitions) were sized for the old parameters
        raise StageSetupError("a parameter changed shape under DeepSpeed: a phase that changes the image "
                              "size needs distributed.deepspeed=false")

    def set_batch(self, batch: int, micro: int, accum: int) -> None:
        # DeepSpeed keeps the layout in its config: micro batch first (it keeps the accumulation
        # steps), then the global batch (it changes them)
        self.model.set_train_micro_batch_size(micro)
        self.model.set_train_batch_size(batch)
        # DeepSpeed finds its accumulation boundary from a micro-step count modulo the steps; a
        # phase starts at an optimiser step, so the count restarts (as after a resume)
        self.model.micro_steps = 0

    def micro_context(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed syncs at its own accumulation boundary

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        self.model.backward(loss)  # DeepSpeed divides by the accumulation steps itself
        self.model.step()  # a no-op except at the accumulation boundary

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        self.schedule.step()
        return float(norm) if norm is not None else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        # deepspeed: only for the stages that use it
        import deepspeed

        params = list(self.module.parameters())
        ctx = (deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.zero_stage == 3
               else contextlib.nullcontext())
        with ctx:
            return {k: v.detach().clone().float().reshape(() if k in self.scalars else v.shape)
                    for k, v in self.module.state_dict().items()}

    def save(self, book: DigestBook, rank: int) -> None:
        # DeepSpeed writes its shards through its checkpoint engine's save(state, path): routed
        # through the book, they are hashed as they are written, and a full disk raises OSError
        engine = self.model.checkpoint_engine
        serialization = getattr(engine, "zipfile_serialization", True)

        def save(state_dict: dict, path: str) -> None:  # DeepSpeed passes both by keyword
            book.save(state_dict, path, _use_new_zipfile_serialization=serialization)

        engine.save = save
        try:
            self.model.save_checkpoint(str(book.root / "deepspeed"), tag=DS_TAG, save_latest=False)
        finally:
            del engine.save  # the class's own again
        if rank == 0:
            book.save({"schedule": self.schedule.state_dict()}, book.root / "train_state.pt")

    def load(self, ckpt: Path, step: int | None = None) -> None:
        state = integrity.load(ckpt / "train_state.pt", step, map_location="cpu", weights_only=False)
        self.model.load_checkpoint(str(ckpt / "deepspeed"), tag=DS_TAG, load_optimizer_states=True,
                                   load_lr_scheduler_states=False)
        self.schedule.load_state_dict(state["schedule"])
