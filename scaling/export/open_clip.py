"""A CLIP stage as an open_clip model folder: ``open_clip.create_model('local-dir:FOLDER')`` builds
it, and ``clip_benchmark eval --model local-dir:FOLDER`` evaluates it with no code of ours.

The folder::

    open_clip_config.json         open_clip's model_cfg + preprocess_cfg (the stage's eval resize)
    open_clip_model.safetensors   the weights: our EvaClip has open_clip's module tree and keys
    timm/config.json              the vision tower as timm's ``local-dir:`` model (architecture +
                                  model_args): how a tower of any shape, proxies included, travels,
                                  since open_clip's config names a timm model but takes no timm kwargs
    export.json                   the stage, rung, image size, and the built-in open_clip model
                                  name of the rung when the tower is exactly that model

open_clip_config.json names ``timm/`` by absolute path (timm resolves ``local-dir:`` from the
working directory): export again after moving the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

from scaling.data.tokenizer import get_tokenizer
from scaling.export.errors import ExportError
from scaling.export.stage import FinishedStage
from scaling.models.build import build_clip
from scaling.models.interop import CheckpointMismatchError, check_state_dict, load_clip_state_dict
from scaling.models.registry import apply_overrides, configured_rung_of, get_rung
from scaling.models.specs import RungSpec
from scaling.models.vision import eva_kwargs
from scaling.train.checkpoint import load_model_state

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
TIMM_DIR = "timm"
INFO = "export.json"
# Any registered timm Eva builder: every argument it sets is overridden by the tower's own.
TIMM_ARCHITECTURE = "eva02_tiny_patch14_224"
RESIZE_MODES = {"resize_center_crop": "shortest", "resize": "squash"}  # eval.mode -> open_clip's
TRAINING_ONLY = ("patch_drop_rate", "drop_path_rate")


def stage_rung(stage: FinishedStage) -> RungSpec:
    """The rung as the stage built it, at the image size its final weights are at."""
    if str(stage.cfg.stage.kind) != "clip":
        raise ExportError(f"{stage.out_dir} is a {stage.cfg.stage.kind} stage; open_clip exports CLIP "
                          "stages (a vision tower alone has no text tower to zero-shot with)")
    spec = configured_rung_of(stage.cfg)
    size = int(stage.manifest.get("image_size") or spec.vision.image_size)
    return apply_overrides(spec, {"vision.image_size": size}) if size != spec.vision.image_size else spec


def timm_config(spec: RungSpec) -> dict[str, Any]:
    """timm ``config.json`` of the vision tower (``timm.create_model('local-dir:...')``)."""
    if spec.vision.norm != "layernorm":
        raise ExportError(f"{spec.name}: open_clip cannot build a {spec.vision.norm} EVA tower (timm's Eva "
                          "takes its norm layer as a class, which a JSON model config cannot name; "
                          "open_clip has no EVA-CLIP-8B/18B config either); export a layernorm rung")
    args = {k: v for k, v in eva_kwargs(spec.vision).items() if k not in (*TRAINING_ONLY, "norm_layer")}
    return {"architecture": TIMM_ARCHITECTURE, "model_args": args, "pretrained_cfg": {}}


def model_config(spec: RungSpec, timm_dir: Path, eval_mode: str) -> dict[str, Any]:
    text = spec.text
    assert text is not None  # stage_rung refuses MIM stages
    vision = {"image_size": spec.vision.image_size, "timm_model_name": f"local-dir:{timm_dir.resolve()}",
              "timm_model_pretrained": False, "timm_pool": "token" if spec.vision.class_token else "avg",
              "timm_proj": None}
    text_cfg = {"context_length": text.context_length, "vocab_size": text.vocab_size, "width": text.width,
                "heads": text.heads, "layers": text.depth, "mlp_ratio": text.mlp_ratio}
    preprocess = {"size": spec.vision.image_size, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                  "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
                  "resize_mode": RESIZE_MODES[eval_mode]}
    return {"model_cfg": {"embed_dim": spec.embed_dim, "custom_text": True, "vision_cfg": vision,
                          "text_cfg": text_cfg},
            "preprocess_cfg": preprocess}


def builtin_name(stage: FinishedStage, spec: RungSpec) -> str | None:
    """open_clip's own model name for the rung, when the stage trained exactly that model."""
    if spec.proxy or spec != get_rung(str(stage.cfg.stage.rung), False):
        return None
    known = set(open_clip.list_models())
    return next((n for n in (spec.name, *spec.aliases) if n in known), None)


def export_open_clip(stage: FinishedStage, out: Path) -> Path:
    """Write ``stage``'s final weights as an open_clip model folder ``out``; returns it."""
    spec = stage_rung(stage)
    timm_cfg = timm_config(spec)
    state = load_model_state(stage.out_dir, key=str(stage.out_dir))
    try:
        check_state_dict(build_clip(spec, device="meta"), state, f"{stage.name} in {stage.out_dir}")
    except CheckpointMismatchError as exc:
        raise ExportError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / TIMM_DIR).mkdir(exist_ok=True)
    (out / TIMM_DIR / "config.json").write_text(json.dumps(timm_cfg, indent=1))
    (out / CONFIG).write_text(json.dumps(model_config(spec, out / TIMM_DIR, str(stage.cfg.eval.mode)), indent=1))
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(out / WEIGHTS))
    info = {"stage": stage.name, "stage_dir": str(stage.out_dir.resolve()), "rung": spec.name,
            "proxy": spec.proxy, "image_size": spec.vision.image_size,
            "samples_seen": int(stage.manifest.get("samples_seen", 0)),
            "open_clip_model": builtin_name(stage, spec), "model": f"local-dir:{out.resolve()}"}
    (out / INFO).write_text(json.dumps(info, indent=1))
    return out


@torch.no_grad()
def check_export(out: Path, stage: FinishedStage) -> float:
    """Largest difference of open_clip's image and text embeddings from the stage's own model on
    a random image and a caption (0 when the export is faithful): proxies only, it builds both."""
    spec = stage_rung(stage)
    ours = build_clip(spec)
    load_clip_state_dict(ours, load_model_state(stage.out_dir))
    theirs = open_clip.create_model(f"local-dir:{out.resolve()}")
    ours.eval(), theirs.eval()
    size = spec.vision.image_size
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = get_tokenizer(spec.text.context_length)(["a photo of a cat"])
    return max(float((ours.encode_image(image) - theirs.encode_image(image, normalize=True)).abs().max()),
               float((ours.encode_text(tokens) - theirs.encode_text(tokens, normalize=True)).abs().max()))
