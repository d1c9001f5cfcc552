"""The stage's data: training stream, tokenizer, transforms, and the held-out sets it evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from scaling.data.masking import mask_generator
from scaling.data.shards import ShardStream
from scaling.data.synth_cache import ensure_synthetic
from scaling.data.transforms import train_transform
from scaling.kinds import stage_kind
from scaling.paths import REPO_ROOT


@dataclass
class StageData:
    train: str  # shard pattern
    classification: str | None
    retrieval: str | None
    synthetic: bool


def _abs(path: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else REPO_ROOT / p)


def resolve_sources(cfg: DictConfig, image_size: int, progress: bool = False) -> StageData:
    """Real shards from ``data.train`` (eval sets from ``eval.*``), or the synthetic world,
    generated once under ``data.cache_dir`` with its held-out zero-shot sets."""
    synth = None
    if cfg.data.train is None:
        synth = ensure_synthetic(_abs(cfg.data.cache_dir), samples=cfg.data.synth_samples,
                                 image_size=image_size, seed=cfg.data.synth_seed, progress=progress)
    train = cfg.data.train if cfg.data.train is not None else synth["train"]
    cls = cfg.eval.classification or (synth or {}).get("classification")
    ret = cfg.eval.retrieval or (synth or {}).get("retrieval")
    return StageData(train=train, classification=cls, retrieval=ret, synthetic=cfg.data.train is None)


def train_stream(cfg: DictConfig, urls: str, image_size: int, grid: int, tokenizer, micro_batch: int,
                 rank: int, world_size: int, seed_offset: int = 0, pin_memory: bool | None = None):
    """The rank's infinite (resampled) stream of micro-batches, resumable via state_dict.

    Images come as ``uint8[B, 3, S, S]`` (cropped, not normalised): the consumer calls
    ``scaling.data.transforms.normalize_on_device`` after moving them, so the process that
    receives the loader workers' batches gets a quarter of the bytes and does no float work.
    With loader workers and a CUDA device, batches arrive in pinned memory (an asynchronous copy).
    ``seed_offset`` (the phase index) gives each phase of a stage its own data order."""
    kind = stage_kind(cfg.stage.kind)
    masks = mask_generator(cfg, grid) if kind.masks else None
    if pin_memory is None:  # the stage trains on the GPU when there is one
        pin_memory = torch.cuda.is_available()
    return ShardStream(
        urls,
        batch_size=micro_batch,
        transform=train_transform(image_size, tuple(cfg.data.crop_scale), normalize=False),
        tokenizer=tokenizer if kind.captions else None,
        mask_generator=masks,
        seed=cfg.train.seed + seed_offset,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        num_workers=cfg.data.workers,
        resampled=cfg.data.resampled,
        pin_memory=pin_memory,
    )
