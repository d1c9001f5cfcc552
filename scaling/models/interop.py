"""Load and save towers and CLIPs in the layouts users hold.

* open_clip EVA CLIPs (``visual.trunk.*``, ``text.*``, ``logit_scale``): our ``EvaClip`` has the
  same module tree, so the state dict is the same and loads as is.
* timm ``Eva`` state dicts (``blocks.0.attn.qkv.weight``, ...): a vision tower is ``trunk.`` + those.
* BAAI EVA / EVA-CLIP checkpoints (``visual.blocks.0.mlp.w1``, ``inner_attn_ln``, ...): the vision
  keys go through timm's own ``checkpoint_filter_fn`` (which also resamples patch and position
  embeddings to the model's grid); the text keys are open_clip's already.

Every loader checks shapes first and names the first mismatched key with both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from open_clip.transformer import TextTransformer
from safetensors.torch import load_file, save_file
from timm.models.eva import checkpoint_filter_fn
from torch import nn

from scaling.models.clip import EvaClip, MimStudent
from scaling.models.vision import EvaVisionTower

StateDict = Mapping[str, torch.Tensor]
_WRAPPERS = ("state_dict", "model", "module", "model_ema")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def unwrap(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """Strip training wrappers (``{'state_dict': ...}``, ``module.`` prefixes)."""
    sd = state_dict
    for key in _WRAPPERS:
        if isinstance(sd.get(key), Mapping):
            sd = sd[key]
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt``/``.pth``/``.bin`` or ``.safetensors`` file (tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return unwrap(load_file(str(path)))
    return unwrap(torch.load(path, map_location="cpu", weights_only=True))


def detect_format(state_dict: StateDict) -> str:
    """``open_clip``, ``baai_clip``, ``mim`` (a MIM student), ``tower`` (an ``EvaVisionTower``),
    ``baai_vision`` or ``timm``."""
    keys = set(state_dict)
    if "visual.trunk.pos_embed" in keys or any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    if any(k.startswith("visual.") for k in keys):
        return "baai_clip"
    if any(k.startswith("encoder.trunk.") for k in keys):
        return "mim"
    if any(k.startswith("trunk.") for k in keys):
        return "tower"
    if any(".mlp.w1" in k or ".mlp.w3" in k or "inner_attn_ln" in k or "ffn_ln" in k for k in keys):
        return "baai_vision"
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys):
        return "timm"
    raise CheckpointMismatchError(
        "unrecognised checkpoint layout (expected open_clip 'visual.trunk.*', BAAI 'visual.*', "
        f"or timm Eva 'blocks.*' keys); first keys: {sorted(keys)[:5]}"
    )


def check_state_dict(module: nn.Module, state_dict: StateDict, what: str) -> None:
    """Raise ``CheckpointMismatchError`` naming the first key whose shape, or presence, differs."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{what}: '{key}' has shape {tuple(state_dict[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model; check that the rung/config matches the checkpoint"
            )
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), first '{missing[0]}'")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), first '{unexpected[0]}'")
        raise CheckpointMismatchError(
            f"{what}: {'; '.join(parts)}; check that the rung/config matches"
        )


def materialize_buffers(module: nn.Module, device: torch.device | str = "cpu") -> None:
    """Allocate buffers left on the meta device and recompute the non-persistent ones.

    A model built on ``meta`` and loaded with ``assign=True`` gets its parameters and
    persistent buffers from the checkpoint; RoPE tables, EVA's zero k-bias and the text
    causal mask are not in checkpoints and are rebuilt here.
    """
    touched = []
    for m in module.modules():
        for name, buf in list(m._buffers.items()):
            if buf is not None and buf.is_meta:
                m._buffers[name] = torch.empty_like(buf, device=device)
                touched.append(m)
    for m in dict.fromkeys(touched):
        if hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()
        elif isinstance(m, TextTransformer) and m.attn_mask is not None:
            m.attn_mask = m.build_causal_mask().to(device)


def _load(module: nn.Module, state_dict: StateDict, what: str) -> None:
    check_state_dict(module, state_dict, what)
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(dict(state_dict), strict=True, assign=on_meta)
    if on_meta:
        first = next(iter(state_dict.values()), None)
        materialize_buffers(module, first.device if first is not None else "cpu")


def _vision_keys(state_dict: StateDict, tower: EvaVisionTower, fmt: str) -> dict[str, torch.Tensor]:
    """Vision weights of any supported layout, as ``EvaVisionTower`` keys (``trunk.*``)."""
    if fmt == "open_clip":
        sub = {
            k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.trunk.")
        }
    elif fmt == "mim":
        sub = {
            k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.trunk.")
        }
    elif fmt == "tower":
        sub = dict(state_dict)
    elif fmt == "timm":
        sub = {f"trunk.{k}": v for k, v in state_dict.items()}
    else:  # BAAI layouts: timm renames (and resamples embeddings to this grid)
        filtered = checkpoint_filter_fn(dict(state_dict), tower.trunk)
        sub = {f"trunk.{k}": v for k, v in filtered.items()}
    return _final_norm(sub, tower)


def _final_norm(sub: dict[str, torch.Tensor], tower: EvaVisionTower) -> dict[str, torch.Tensor]:
    """timm's EVA-02 models built with their default ``global_pool='avg'`` (the ``mim_in22k``
    ones) keep the final norm as ``fc_norm`` (applied after pooling) and an empty ``norm``; the
    tower applies the same LayerNorm per token as ``norm``: the same weights, renamed."""
    own = tower.state_dict()
    if "trunk.norm.weight" in own and "trunk.norm.weight" not in sub and "trunk.fc_norm.weight" in sub:
        sub = {("trunk.norm." + k[len("trunk.fc_norm."):] if k.startswith("trunk.fc_norm.") else k): v
               for k, v in sub.items()}
    return sub


def load_vision_state_dict(
    tower: EvaVisionTower | MimStudent, state_dict: StateDict, *, head: str = "strict"
) -> None:
    """Load a vision tower (or a MIM student's encoder) from any supported layout.

    ``head``: ``strict`` = the projection must match exactly; ``skip`` = leave the tower's own
    projection as it is (initialising a CLIP visual from a MIM encoder, or a MIM encoder from a
    CLIP, where one side has no projection).
    """
    if head not in ("strict", "skip"):
        raise ValueError(f"head must be 'strict' or 'skip'; got {head!r}")
    target = tower.encoder if isinstance(tower, MimStudent) else tower
    sd = unwrap(state_dict)
    sub = _vision_keys(sd, target, detect_format(sd))
    if head == "skip":
        own = {k: v for k, v in target.state_dict().items() if k.startswith("trunk.head.")}
        sub = {k: v for k, v in sub.items() if not k.startswith("trunk.head.")} | own
    _load(target, sub, f"vision tower ({target.spec.width}w x {target.spec.depth})")


def load_clip_state_dict(model: EvaClip, state_dict: StateDict) -> None:
    """Load an open_clip or BAAI EVA-CLIP state dict into ``model`` (shapes checked first)."""
    sd = unwrap(state_dict)
    fmt = detect_format(sd)
    if fmt == "open_clip":
        _load(model, sd, f"CLIP {model.spec.name}")
        return
    if fmt != "baai_clip":
        raise CheckpointMismatchError(
            f"expected a CLIP checkpoint (open_clip or BAAI layout); got a {fmt} state dict"
        )
    vision = _vision_keys(sd, model.visual, fmt)
    rest = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    _load(
        model, {**{f"visual.{k}": v for k, v in vision.items()}, **rest}, f"CLIP {model.spec.name}"
    )


def clip_state_dict(model: EvaClip) -> dict[str, torch.Tensor]:
    """The open_clip EVA CLIP state dict (``open_clip.create_model('EVA02-...')`` loads it)."""
    return dict(model.state_dict())


def timm_state_dict(tower: EvaVisionTower | EvaClip | MimStudent) -> dict[str, torch.Tensor]:
    """A timm ``Eva`` state dict of the vision tower (``timm.create_model(...)`` loads it)."""
    if isinstance(tower, EvaClip):
        tower = tower.visual
    elif isinstance(tower, MimStudent):
        tower = tower.encoder
    return {k[len("trunk.") :]: v for k, v in tower.state_dict().items()}


def save_checkpoint(state_dict: StateDict, path: str | Path) -> Path:
    """Write a state dict (``.safetensors`` by suffix, torch format otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path
