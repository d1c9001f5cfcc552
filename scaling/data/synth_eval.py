"""Held-out zero-shot sets of the synthetic world, and a small real-image set (digits).

- ``classification``: one object alone, class = "colour shape" over the 56 combinations seen
  in training (chance 1/56), ImageFolder layout + ``classnames.txt`` + ``templates.txt``;
- ``composition``: the 8 held-out combinations (never drawn in training), classified among
  all 64 names (chance 1/64): composing seen words into unseen pairs;
- ``retrieval``: new scenes with two complete captions each (``captions.jsonl``).

Each set has its own seed stream, and the prompts ("a photo of a {}.") never occur in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from scaling.data import captions as grammar
from scaling.data import world
from scaling.data.encoding import png_indexed
from scaling.data.world_drawing import render_indexed

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a rendering of a {}.")


def _class_name(shape: str, colour: str) -> str:
    return f"{colour} {shape}"


def _write_folder_set(
    root: Path, split: str, seed: int, image_size: int, combos, classes, n: int
) -> None:
    """ImageFolder: ``root/<class dir>/<i>.png``; class dirs sort in ``classnames.txt`` order."""
    names = [_class_name(s, c) for s, c in classes]
    order = sorted(range(len(names)), key=lambda i: names[i].replace(" ", "_"))
    names = [names[i] for i in order]
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    for name in names:  # every class gets a folder (empty when not drawn), so labels line up
        (root / name.replace(" ", "_")).mkdir()
    index = 0
    for shape, colour in combos:
        folder = root / _class_name(shape, colour).replace(" ", "_")
        for j in range(n):
            rnd = world.sample_rng(split, seed, index)
            scene = world.sample_scene(rnd, image_size, combos=((shape, colour),), single=True)
            (folder / f"{j:04d}.png").write_bytes(
                png_indexed(*render_indexed(scene, image_size, rnd))
            )
            index += 1


def write_eval_sets(
    out_dir: str | os.PathLike,
    image_size: int = 32,
    seed: int = 0,
    samples_per_class: int = 10,
    retrieval_samples: int = 500,
) -> dict[str, Path]:
    """Write the held-out zero-shot sets; returns ``{classification, composition, retrieval}`` dirs."""
    out = Path(out_dir)
    held = tuple(c for c in world.ALL_COMBOS if c in world.HELD_OUT)
    paths = {
        "classification": out / "classification",
        "composition": out / "composition",
        "retrieval": out / "retrieval",
    }
    _write_folder_set(
        paths["classification"],
        "eval-cls",
        seed,
        image_size,
        world.SEEN_COMBOS,
        world.SEEN_COMBOS,
        samples_per_class,
    )
    _write_folder_set(
        paths["composition"],
        "eval-comp",
        seed,
        image_size,
        held,
        world.ALL_COMBOS,
        samples_per_class,
    )
    ret = paths["retrieval"]
    (ret / "images").mkdir(parents=True)
    with open(ret / "captions.jsonl", "w") as f:
        for i in range(retrieval_samples):
            rnd = world.sample_rng("eval-ret", seed, i)
            scene = world.sample_scene(rnd, image_size)
            name = f"images/{i:05d}.png"
            (ret / name).write_bytes(png_indexed(*render_indexed(scene, image_size, rnd)))
            texts = [grammar.caption(scene, rnd, detail=2) for _ in range(2)]
            f.write(json.dumps({"image": name, "captions": texts}) + "\n")
    return paths


def write_digits(out_dir: str | os.PathLike, image_size: int = 32) -> Path:
    """scikit-learn's 1,797 handwritten 8x8 digits as an ImageFolder set (a small real-image set)."""
    # scikit-learn takes ~2 s to import: only when the digits set is written
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    (root / "templates.txt").write_text('a photo of the number: "{}".\na handwritten {}.\n')
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / f"{label}_{names[label]}"
        folder.mkdir(exist_ok=True)
        img = Image.fromarray(np.uint8(255 - pixels * 255 / 16)).convert("RGB")
        img.resize((image_size, image_size), Image.BICUBIC).save(folder / f"{i:04d}.png")
    return root
