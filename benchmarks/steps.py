"""Training steps to time: the toolkit's own step (``scaling.train``'s ``TrainingLoop.train_step`` on a
stage config, without the data pipeline) and a reference step on the same model config built
straight from timm / open_clip with a plain AdamW, plus the GEMM shapes a step runs.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def width_overrides(width: int, head_dim: int = 64, text: bool = True) -> list[str]:
    """Config overrides that set a proxy's vision (and text) tower to ``width`` (EVA-02 shapes:
    64-wide heads, SwiGLU hidden 8/3 x width)."""
    heads = max(1, width // head_dim)
    out = [f"model.vision.width={width}", f"model.vision.heads={heads}",
           f"model.vision.mlp_hidden={int(width * 8 / 3)}"]
    if text:
        out += [f"model.text.width={width}", f"model.text.heads={heads}"]
    return out


@dataclass
class StepSetup:
    """One runnable step and what it needs to be measured."""

    kind: str
    cfg: object
    rung: object
    batch_size: int
    step: Callable[[], object]
    model: nn.Module
    teacher: nn.Module | None
    batch: dict
    flops_per_sample: float
    dtype: torch.dtype
    extras: dict = field(default_factory=dict)

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_sample * self.batch_size


def stage_config(kind: str, rung: str, batch: int | None, overrides: list[str], proxy: bool = True):
    """The stage config as the toolkit resolves it; ``batch=None`` keeps the recipe's batch."""
    from scaling.config import load_stage_config

    extra = [] if batch is None else [f"train.batch_size={batch}"]
    return load_stage_config(kind, rung, proxy=proxy, overrides=[
        *overrides, *extra, "train.micro_batch=null", "distributed.deepspeed=false"])


def teacher_spec(cfg):
    """The MIM teacher's vision tower: the same rung's CLIP tower at its own (proxy) size."""
    from scaling.models import get_rung

    return get_rung(cfg.stage.teacher_rung or cfg.stage.rung, proxy=cfg.stage.proxy).vision


def make_batch(kind: str, rung, batch: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    spec = rung.mim if kind == "mim" else rung.vision
    images = torch.randn(batch, spec.in_chans, spec.image_size, spec.image_size, generator=g)
    out = {"image": images.to(device)}
    if kind == "mim":
        n = spec.grid**2
        scores = torch.rand(batch, n, generator=g)
        out["mask"] = (scores < 0.4).to(device)
    else:
        ctx = rung.text.context_length
        tokens = torch.randint(1, rung.text.vocab_size - 1, (batch, ctx), generator=g)
        tokens[:, -1] = rung.text.vocab_size - 1  # the end-of-text token: the argmax the tower pools
        out["text"] = tokens.to(device)
    return out


def toolkit_step(cfg, device: torch.device | str = "cpu") -> StepSetup:
    """``TrainingLoop.train_step`` of the toolkit (its engine, param groups, optimiser, schedule,
    clipping, autocast and loss) on a fixed in-memory batch: no data pipeline, no logging."""
    from scaling.costs import mim_target_dim
    from scaling.kinds import stage_kind
    from scaling.models.build import build_mim, build_vision
    from scaling.train.kinds import build_stage_model, training_kind
    from scaling.train.loop import TrainingLoop, batch_layout, seed_all
    from scaling.train.stage_models import stage_rung
    from scaling.train.throughput import flops_per_sample

    device = torch.device(device)
    kind = cfg.stage.kind
    seed_all(cfg.train.seed)
    stage = TrainingLoop.__new__(TrainingLoop)  # the real step without the data pipeline and evaluator
    stage.cfg, stage.device, stage.kind = cfg, device, kind
    stage.rank, stage.world = 0, 1
    stage.description, stage.training = stage_kind(kind), training_kind(kind)(cfg)
    stage.micro, stage.accum = batch_layout(cfg, 1)
    stage.total_steps = 10**9
    stage.step, stage.samples_seen, stage.metrics = 0, 0, {}
    t_spec = None
    if kind == "mim":
        rung = stage_rung(cfg)
        t_spec = teacher_spec(cfg)
        t_spec = dataclasses.replace(t_spec, image_size=rung.mim.grid * t_spec.patch_size)
        teacher = build_vision(t_spec, device=device, attn=cfg.model.attn).requires_grad_(False).eval()
        stage.module = build_mim(rung, mim_target_dim(t_spec, rung.mim), device=device, attn=cfg.model.attn,
                                 grad_checkpointing=cfg.model.grad_checkpointing, drop_path=cfg.model.drop_path)
        stage.teacher, stage.teacher_image_size = teacher, t_spec.image_size
    else:
        stage.module, stage.teacher, info = build_stage_model(cfg, device)
        rung = info["rung"]
        stage.teacher_image_size = None
    stage.rung = rung
    stage.engine = stage._engine()
    batch = make_batch(kind, rung, cfg.train.batch_size, device)
    batches = itertools.repeat(batch)
    stage.module.train()

    def step() -> object:
        return stage.train_step(batches)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    fps = flops_per_sample(kind, rung, cfg.model.patch_dropout, cfg.loss.mask_ratio, t_spec)
    return StepSetup(kind, cfg, rung, cfg.train.batch_size, step, stage.module, stage.teacher, batch, fps,
                     dtype, {"optimizer": cfg.optim.name, "stage": stage})


# -- the reference: timm / open_clip models and a plain AdamW step -----------------------------


class RefClip(nn.Module):
    """timm ``Eva`` + open_clip ``TextTransformer`` + a temperature, nothing else."""

    def __init__(self, rung, patch_dropout: float) -> None:
        from open_clip.transformer import TextTransformer
        from timm.models.eva import Eva

        from scaling.models.vision import eva_kwargs

        super().__init__()
        self.visual = Eva(**eva_kwargs(rung.vision, patch_dropout=patch_dropout))
        t = rung.text
        self.text = TextTransformer(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                                    heads=t.heads, layers=t.depth, mlp_ratio=t.mlp_ratio, output_dim=t.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))

    def forward(self, images, tokens):
        return (F.normalize(self.visual(images), dim=-1), F.normalize(self.text(tokens), dim=-1),
                self.logit_scale.exp())


class RefMim(nn.Module):
    """timm ``Eva`` with a [MASK] token and a linear head (the EVA-02 student, written plainly)."""

    def __init__(self, spec, target_dim: int) -> None:
        from timm.models.eva import Eva

        from scaling.models.vision import eva_kwargs

        super().__init__()
        self.trunk = Eva(**eva_kwargs(spec))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, spec.width))
        self.head = nn.Linear(spec.width, target_dim)

    def forward(self, images, mask):
        t = self.trunk
        x = t.patch_embed(images)
        x = torch.where(mask.unsqueeze(-1), self.mask_token, x)
        x, rope = t._pos_embed(x)
        for block in t.blocks:
            x = block(x, rope=rope)
        return self.head(t.norm(x)[:, t.num_prefix_tokens:])


def reference_step(cfg, device: torch.device | str = "cpu", fused: bool = False) -> StepSetup:
    """Same model config, batch and dtype; plain ``torch.optim.AdamW`` over all parameters,
    ``loss.backward(); opt.step(); opt.zero_grad()``. ``fused`` picks torch's fused AdamW kernel
    instead of its default implementation (a per-tensor loop on CPU)."""
    from open_clip.loss import ClipLoss
    from timm.models.eva import Eva

    from scaling.models.vision import eva_kwargs
    from scaling.train.loop import seed_all
    from scaling.train.stage_models import stage_rung
    from scaling.train.throughput import flops_per_sample

    device = torch.device(device)
    kind = cfg.stage.kind
    seed_all(cfg.train.seed)
    rung = stage_rung(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    batch = make_batch(kind, rung, cfg.train.batch_size, device)
    t_spec, teacher = None, None
    if kind == "mim":
        t_spec = teacher_spec(cfg)
        t_spec = dataclasses.replace(t_spec, image_size=rung.mim.grid * t_spec.patch_size)
        teacher = Eva(**eva_kwargs(t_spec)).to(device).requires_grad_(False).eval()
        model = RefMim(rung.mim, t_spec.embed_dim).to(device)
        images, mask = batch["image"], batch["mask"]
        prefix = int(t_spec.class_token)

        def loss_fn() -> torch.Tensor:
            with torch.no_grad():
                target = teacher.head(teacher.forward_features(images)[:, prefix:])  # projected tokens
            pred = model(images, mask)
            return -F.cosine_similarity(pred[mask].float(), target[mask].float(), dim=-1).mean()
    else:
        model = RefClip(rung, cfg.model.patch_dropout).to(device)
        clip_loss = ClipLoss()
        images, tokens = batch["image"], batch["text"]

        def loss_fn() -> torch.Tensor:
            img, txt, scale = model(images, tokens)
            return clip_loss(img.float(), txt.float(), scale.float())

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=fused or None)

    def step() -> object:
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    fps = flops_per_sample(kind, rung, cfg.model.patch_dropout, cfg.loss.mask_ratio, t_spec)
    return StepSetup(kind, cfg, rung, cfg.train.batch_size, step, model, teacher, batch, fps, dtype,
                     {"optimizer": "adamw (fused)" if fused else "adamw (plain)"})


# -- the step's GEMMs --------------------------------------------------------------------------

Gemm = tuple[int, int, int]  # (M, K, N): [M, K] @ [K, N]


def _is_trained(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def step_gemms(setup: StepSetup) -> Counter[Gemm]:
    """The matmuls of the step's linear layers (incl. ``nn.MultiheadAttention``'s in/out
    projections): forward ``[M,K]@[K,N]``; for trained layers also the input gradient
    ``[M,N]@[N,K]`` and the weight gradient ``[N,M]@[M,K]``. Counted once per call."""
    gemms: Counter[Gemm] = Counter()

    def add(m: int, k: int, n: int, trained: bool) -> None:
        gemms[(m, k, n)] += 1
        if trained:
            gemms[(m, n, k)] += 1
            gemms[(n, m, k)] += 1

    def linear_hook(mod: nn.Linear, args, _out) -> None:
        x = args[0]
        add(x.numel() // mod.in_features, mod.in_features, mod.out_features, _is_trained(mod))

    def mha_hook(mod: nn.MultiheadAttention, args, _out) -> None:
        x = args[0]
        m = x.numel() // mod.embed_dim
        trained = mod.in_proj_weight is not None and mod.in_proj_weight.requires_grad
        add(m, mod.embed_dim, 3 * mod.embed_dim, trained)
        add(m, mod.embed_dim, mod.embed_dim, trained)

    handles = []
    roots = [setup.model] + ([setup.teacher] if setup.teacher is not None else [])
    for root in roots:
        for mod in root.modules():
            if isinstance(mod, nn.MultiheadAttention):
                handles.append(mod.register_forward_hook(mha_hook))
            elif isinstance(mod, nn.Linear):
                handles.append(mod.register_forward_hook(linear_hook))
    try:
        setup.step()
    finally:
        for h in handles:
            h.remove()
    return gemms


def gemm_flops(gemms: Counter[Gemm]) -> float:
    return float(sum(2 * m * k * n * c for (m, k, n), c in gemms.items()))


def gemm_runner(gemms: Counter[Gemm], dtype: torch.dtype, device: torch.device | str = "cpu") -> Callable[[], None]:
    """A callable that runs every GEMM of ``gemms`` (with its count) as ``torch.mm`` into
    preallocated outputs: the dense-matmul time of the step's own shapes."""
    device = torch.device(device)
    work = []
    for (m, k, n), count in gemms.items():
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        work.append((a, b, torch.empty(m, n, device=device, dtype=dtype), count))

    def run() -> None:
        for a, b, c, count in work:
            for _ in range(count):
                torch.mm(a, b, out=c)

    return run
