"""What a stage's model is built from: the rung spec after config overrides and the upstream
checkpoints that feed it (MIM teacher, CLIP vision/text inits). The stage kinds
(``scaling.train.kinds``) build their models with these."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from timm.layers import resample_abs_pos_embed
from torch import nn

from scaling.models.build import build_vision
from scaling.models.registry import configured_rung_of, get_rung
from scaling.train.checkpoint import (
    MANIFEST,
    CheckpointError,
    load_model_state,
    resolve_checkpoint_dir,
)
from scaling.train.errors import StageInputError

log = logging.getLogger(__name__)


def stage_rung(cfg: DictConfig, name: str | None = None):
    """The rung spec (proxy or not) with ``model.vision``/``model.text`` and ``data.image_size``
    applied (``models.registry.configured_rung_of``). An upstream rung (``name``) is the registry's:
    the student's overrides are not its own."""
    if name is not None:
        return get_rung(name, proxy=cfg.stage.proxy)
    return configured_rung_of(cfg)


def _manifest_of(path: str | Path) -> dict:
    ckpt = resolve_checkpoint_dir(path) if Path(path).is_dir() else None
    if ckpt is None:
        return {}
    return json.loads((ckpt / MANIFEST).read_text())


def _require(path: str | None, key: str) -> str:
    if path is None:
        raise StageInputError(f"'{key}' is not set")
    if not Path(path).expanduser().exists():
        raise StageInputError(f"'{key}': checkpoint not found: {path}")
    return str(Path(path).expanduser())


def _load(path: str, key: str) -> dict[str, torch.Tensor]:
    try:
        return load_model_state(path, key=key)
    except CheckpointError as exc:
        raise StageInputError(str(exc)) from None


def _sub_state(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return {}


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], key: str, path: str,
               allowed_missing: tuple[str, ...] = (), projection: str | None = None) -> None:
    own = module.state_dict()
    if projection in state and projection in own and state[projection].shape != own[projection].shape:
        # A CLIP of another embedding width: the tower fits, its projection starts fresh.
        log.warning("%s: %s has shape %s, this model's is %s: not loaded (trained from scratch)", key,
                    projection, tuple(state[projection].shape), tuple(own[projection].shape))
        state = {k: v for k, v in state.items() if k != projection}
        allowed_missing = (*allowed_missing, projection)
    shapes = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        k = shapes[0]
        raise StageInputError(
            f"'{key}': {path} does not fit this model: '{k}' has shape {tuple(state[k].shape)}, "
            f"the model expects {tuple(own[k].shape)} (wrong rung or proxy setting?)")
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(allowed_missing)]
    if missing:
        raise StageInputError(f"'{key}': {path} lacks {len(missing)} weights of this model, e.g. {missing[:3]} "
                              "(a tower of another depth or rung? inits must have this rung's tower shapes)")
    if unexpected:
        log.warning("%s: ignoring %d extra weights from %s, e.g. %s", key, len(unexpected), path, unexpected[:3])


def resample_pos_embed(state: dict[str, torch.Tensor], key: str, grid: int, prefix_tokens: int) -> None:
    """Resize an absolute position table to a new patch grid (teacher fed larger images, or an
    init from a checkpoint trained at another image size)."""
    if key not in state:
        return

    state[key] = resample_abs_pos_embed(state[key], (grid, grid), num_prefix_tokens=prefix_tokens)


def _fit_pos_embed(state: dict[str, torch.Tensor], spec, key: str, path: str) -> None:
    """Resample ``state``'s position table to the grid of ``spec`` (a ``TowerSpec``) when it was
    trained at another image size: a later phase's size, or the papers' "+" runs, which start
    from a 224 px checkpoint. A table of another width is left for ``_load_into`` to name."""
    table = state.get("trunk.pos_embed")
    prefix = int(spec.class_token)
    if table is None or table.dim() != 3 or table.shape[1] == spec.num_tokens or table.shape[-1] != spec.width:
        return
    side = int(round((table.shape[1] - prefix) ** 0.5))
    if side * side != table.shape[1] - prefix:
        return
    log.info("%s: position table of %s resampled from a %dx%d to a %dx%d grid", key, path, side, side,
             spec.grid, spec.grid)
    resample_pos_embed(state, "trunk.pos_embed", spec.grid, prefix)


def build_teacher(cfg: DictConfig, student_spec, device: torch.device) -> tuple[nn.Module, int]:
    """The frozen CLIP vision tower that MIM regresses, and the image size to feed it.

    When patch sizes differ, the teacher sees the image resized to ``student_grid x
    teacher_patch`` so both token grids match (its position table is resampled to that grid).
    """
    if cfg.inputs.teacher is None:
        raise StageInputError(
            "a mim stage needs a teacher: set 'inputs.teacher' (or --teacher) to a CLIP checkpoint "
            "(a clip stage folder, its final/ checkpoint, or an open_clip state dict file)")
    path = _require(cfg.inputs.teacher, "inputs.teacher")
    teacher_rung = cfg.stage.teacher_rung or _manifest_of(path).get("rung")
    if teacher_rung is None:
        raise StageInputError(
            f"'stage.teacher_rung' is not set and {path} does not say which rung it holds; "
            "set stage.teacher_rung=<rung> (e.g. B16)")
    spec = stage_rung(cfg, teacher_rung).vision
    state = _sub_state(_load(path, "inputs.teacher"), ("visual.", "module.visual."))
    if not state:
        raise StageInputError(f"'inputs.teacher': {path} holds no CLIP vision tower (no 'visual.*' weights)")
    image_size = student_spec.grid * spec.patch_size
    if image_size != spec.image_size:
        spec = dataclasses.replace(spec, image_size=image_size)
    source_table = state.get("trunk.pos_embed")
    _fit_pos_embed(state, spec, "inputs.teacher", path)
    teacher = build_vision(spec, device=device, attn=cfg.model.attn)
    _load_into(teacher, state, "inputs.teacher", path)
    # kept so that a phase at another image size resamples the checkpoint's table once, not twice
    teacher.source_pos_embed = source_table
    teacher.requires_grad_(False).eval()
    return teacher, image_size


def model_options(cfg: DictConfig, device: torch.device) -> dict:
    """The ``models.build`` options every trained tower takes from the stage config."""
    return dict(device=device, attn=cfg.model.attn, grad_checkpointing=cfg.model.grad_checkpointing,
                drop_path=cfg.model.drop_path, subln_rescale=cfg.model.subln_rescale)


def init_vision(tower: nn.Module, path: str) -> None:
    """Load ``inputs.init_vision`` (a MIM encoder or a CLIP vision tower) into a CLIP's vision tower."""
    path = _require(path, "inputs.init_vision")
    full = _load(path, "inputs.init_vision")
    state = _sub_state(full, ("encoder.", "visual.", "module.encoder.", "module.visual."))
    if not state:
        raise StageInputError(f"'inputs.init_vision': {path} holds neither a MIM encoder ('encoder.*') "
                              "nor a CLIP vision tower ('visual.*')")
    _fit_pos_embed(state, tower.spec, "inputs.init_vision", path)
    # A MIM encoder has no CLIP projection: the head starts fresh.
    _load_into(tower, state, "inputs.init_vision", path, allowed_missing=("trunk.head.",),
               projection="trunk.head.weight")


def init_text(tower: nn.Module, path: str) -> None:
    """Load ``inputs.init_text`` (a CLIP's text tower) into a CLIP's text tower."""
    path = _require(path, "inputs.init_text")
    state = _sub_state(_load(path, "inputs.init_text"), ("text.", "module.text."))
    if not state:
        raise StageInputError(f"'inputs.init_text': {path} holds no CLIP text tower ('text.*' weights)")
    _load_into(tower, state, "inputs.init_text", path, projection="text_projection")
