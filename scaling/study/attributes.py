"""What a proxy CLIP's zero-shot errors are made of: colour, shape, or both.

The synthetic world's classes are "<colour> <shape>" pairs, so a top-1 prediction can be right in
its colour word, its shape word, both or neither. A model that knows colours and guesses shapes
scores 1/7 top-1 on the 56-class set; this splits the score to show which one a run learned.

    python -m scaling.study.attributes runs/ladder-eva/clip@E14-<fp> [more stage folders]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from scaling.data.tokenizer import get_tokenizer
from scaling.eval import sets
from scaling.eval.zeroshot import text_classifier
from scaling.train.checkpoint import final_checkpoint, load_model_state
from scaling.train.kinds import build_stage_model
from scaling.train.stage_data import resolve_sources


def split_accuracy(pred: Sequence[int], labels: Sequence[int], classnames: Sequence[str]) -> dict[str, float]:
    """Top-1, colour-word and shape-word accuracy of class predictions (names "<colour> <shape>")."""
    if len(pred) != len(labels) or not labels:
        raise ValueError(f"need as many predictions as labels, at least one ({len(pred)} vs {len(labels)})")
    words = [name.split() for name in classnames]
    if any(len(w) < 2 for w in words):
        raise ValueError("class names must read '<colour> <shape>' (e.g. 'blue circle')")
    n = len(labels)
    return {
        "top1": sum(p == t for p, t in zip(pred, labels, strict=True)) / n,
        "colour": sum(words[p][0] == words[t][0] for p, t in zip(pred, labels, strict=True)) / n,
        "shape": sum(words[p][-1] == words[t][-1] for p, t in zip(pred, labels, strict=True)) / n,
    }


def stage_predictions(stage_dir: str | Path) -> tuple[list[int], list[int], list[str]]:
    """A finished CLIP stage's top-1 predictions on its synthetic classification set."""
    stage_dir = Path(stage_dir)
    final = final_checkpoint(stage_dir)
    if final is None or not (stage_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{stage_dir}: no config.yaml and final checkpoint (a finished clip stage folder?)")
    cfg = OmegaConf.load(stage_dir / "config.yaml")
    if cfg.stage.kind != "clip":
        raise ValueError(f"{stage_dir}: a {cfg.stage.kind} stage; give a clip stage folder")
    cfg.inputs.init_vision = cfg.inputs.init_text = None  # the final weights replace them
    device = torch.device("cpu")
    try:
        model, _, info = build_stage_model(cfg, device)
    except ConfigAttributeError as exc:  # a folder written before a key was added
        raise ValueError(f"{stage_dir}/config.yaml lacks '{exc.full_key}', which this version reads: "
                         "the stage was trained by an older version; rerun it to split its accuracy") from None
    model.load_state_dict(load_model_state(final), strict=False)
    model.eval()
    size = info["rung"].vision.image_size
    source = resolve_sources(cfg, size).classification
    if source is None:
        raise ValueError(f"{stage_dir}: the stage has no classification set (eval.classification)")
    data = sets.load_classification(source, size)
    classifier = text_classifier(model, data.classnames, data.templates,
                                 get_tokenizer(info["rung"].text.context_length), device)
    with torch.no_grad():
        feats = F.normalize(model.encode_image(data.images).float(), dim=-1)
    return (feats @ classifier.float()).argmax(1).tolist(), data.labels.tolist(), list(data.classnames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaling.study.attributes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", help="finished clip stage folders (runs/<experiment>/<stage>-<fp>)")
    args = parser.parse_args(argv)
    for stage in args.stages:
        try:
            acc = split_accuracy(*stage_predictions(stage))
        except (FileNotFoundError, ValueError) as exc:
            print(f"scaling.study.attributes: error: {exc}", file=sys.stderr)
            return 2
        print(f"{stage}: top-1 {100 * acc['top1']:.1f} %, colour {100 * acc['colour']:.1f} %, "
              f"shape {100 * acc['shape']:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
