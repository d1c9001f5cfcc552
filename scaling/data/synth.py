"""Write the synthetic captioned world as img2dataset-layout shards, and its zero-shot sets.

    python -m scaling.data.synth --out data/synth --samples 20000 --image-size 32 --eval
    python -m scaling.data.synth --out data/synth224 --samples 10000 --image-size 224  # JPEG
    python -m scaling.data.synth --grid grid.png --image-size 64   # look at a few samples

Shards hold ``KEY.png`` (palette PNG, below 128 px) or ``KEY.jpg`` (quality 95, from 128 px
up, as img2dataset writes real data; ``--format`` chooses, ``webp`` too), ``KEY.txt`` (caption) and
``KEY.json`` (img2dataset fields plus the scene), byte-identical for the same seed. The zero-shot sets
use their own seeds and prompts that never occur in training captions:

- ``classification``: one object alone, class = "colour shape" over the 56 combinations seen
  in training (chance 1/56), ImageFolder layout + ``classnames.txt`` + ``templates.txt``;
- ``composition``: the 8 held-out combinations (never drawn in training), classified among
  all 64 names (chance 1/64): composing seen words into unseen pairs;
- ``retrieval``: new scenes with two complete captions each (``captions.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scaling.data import captions as grammar
from scaling.data import world
from scaling.data.encoding import FORMATS, encode, png_indexed, resolve_format, tar_member
from scaling.data.synth_eval import TEMPLATES, write_digits, write_eval_sets
from scaling.data.world_drawing import render_indexed

__all__ = [
    "FORMATS",
    "TEMPLATES",
    "encode",
    "make_sample",
    "png_indexed",
    "shard_pattern",
    "write_digits",
    "write_eval_sets",
    "write_grid",
    "write_world",
]


def make_sample(
    split: str, seed: int, index: int, image_size: int, **scene_kw
) -> tuple[np.ndarray, str, world.Scene]:
    """(RGB image, caption, scene) of one sample; a pure function of its arguments."""
    (labels, palette), text, scene = _make_indexed(split, seed, index, image_size, **scene_kw)
    return palette.take(labels, axis=0), text, scene


def _make_indexed(split: str, seed: int, index: int, image_size: int, **scene_kw):
    rnd = world.sample_rng(split, seed, index)
    scene = world.sample_scene(rnd, image_size, **scene_kw)
    drawing = render_indexed(scene, image_size, rnd)
    return drawing, grammar.caption(scene, rnd), scene


def _encode_drawing(drawing: tuple[np.ndarray, np.ndarray], fmt: str) -> bytes:
    if fmt == "png":
        return png_indexed(*drawing)
    labels, palette = drawing
    return encode(palette.take(labels, axis=0), fmt)


def write_world(
    out_dir: str | os.PathLike,
    samples: int,
    image_size: int = 32,
    seed: int = 0,
    shard_size: int = 1000,
    split: str = "train",
    image_format: str = "auto",
    progress: bool = False,
) -> list[Path]:
    """Write ``samples`` captioned scenes as ``{split}-000000.tar``... and return the shard paths
    (``image_format``: ``auto`` = PNG below 128 px, JPEG from 128 px up; or png, jpg, webp)."""
    if samples < 1 or shard_size < 1:
        raise ValueError(f"samples ({samples}) and shard_size ({shard_size}) must be >= 1")
    image_format = resolve_format(image_format, image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = _progress(samples, f"synth {split}", progress)
    paths = []
    for shard, start in enumerate(range(0, samples, shard_size)):
        path = out / f"{split}-{shard:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with open(tmp, "wb") as f:
            for index in range(start, min(start + shard_size, samples)):
                drawing, text, scene = _make_indexed(split, seed, index, image_size)
                key = f"{index:09d}"
                meta = {
                    "key": key,
                    "caption": text,
                    "status": "success",
                    "width": image_size,
                    "height": image_size,
                    "url": f"synth://{split}/{seed}/{index}",
                    "scene": scene.to_json(),
                }
                f.write(tar_member(f"{key}.{image_format}", _encode_drawing(drawing, image_format)))
                f.write(tar_member(f"{key}.txt", text.encode()))
                f.write(tar_member(f"{key}.json", json.dumps(meta).encode()))
                bar.update(1)
            f.write(bytes(1024))  # end-of-archive marker
        os.replace(tmp, path)
        paths.append(path)
    bar.close()
    return paths


def shard_pattern(paths: list[Path]) -> str:
    """A brace pattern for consecutive shards, e.g. ``dir/train-{000000..000009}.tar``."""
    first, last = paths[0].name, paths[-1].name
    if len(paths) == 1:
        return str(paths[0])
    prefix = first[: first.rindex("-") + 1]
    return str(
        paths[0].parent / f"{prefix}{{{first[len(prefix) : -4]}..{last[len(prefix) : -4]}}}.tar"
    )


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        disable=not enabled or not sys.stderr.isatty(),
        file=sys.stderr,
    )


def write_grid(
    path: str | os.PathLike, samples: Iterable[tuple[np.ndarray, str]], cols: int = 4
) -> Path:
    """A PNG sheet of images with their captions underneath (nearest-neighbour upscaled)."""
    # matplotlib only for the preview sheet
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(samples)
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, text) in zip(axes.flat, items, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(text, 34)), fontsize=9, loc="left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scaling.data.synth",
        description="Write the synthetic captioned-image world as img2dataset-layout tar shards "
        "(KEY.png, KEY.txt, KEY.json), its held-out zero-shot sets, or a sample grid PNG.",
        epilog="examples:\n"
        "  python -m scaling.data.synth --out data/synth --samples 20000 --eval\n"
        "  python -m scaling.data.synth --grid grid.png --image-size 64\n\n"
        "Eval sets: classification (56 colour-shape classes, chance 1/56), composition (8 held-out\n"
        "combinations among 64 names, chance 1/64), retrieval (500 scenes, 2 captions each).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, help="output folder (shards go to OUT/, eval sets to OUT/eval/)"
    )
    p.add_argument("--samples", type=int, default=0, help="number of training samples to write")
    p.add_argument(
        "--image-size", type=int, default=32,
        help="side in pixels: 32 or 64 for the proxies, 224/336/448 (or 256 to crop 224 from) for "
        "real sizes; 16-512",
    )
    p.add_argument("--seed", type=int, default=0, help="world seed: same seed, same bytes")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument(
        "--split", default="train", help="shard name prefix and seed stream (default train)"
    )
    p.add_argument(
        "--format", choices=("auto", *FORMATS), default="auto",
        help="image encoding (default auto: palette PNG below 128 px, JPEG quality 95 from 128 px up)",
    )
    p.add_argument("--eval", action="store_true", help="also write the zero-shot sets to OUT/eval/")
    p.add_argument(
        "--digits",
        action="store_true",
        help="also write scikit-learn's handwritten digits (a small real-image set) to OUT/eval/digits/",
    )
    p.add_argument(
        "--samples-per-class", type=int, default=10, help="eval images per class (default 10)"
    )
    p.add_argument(
        "--grid", type=Path, metavar="PNG", help="write a sheet of samples with their captions"
    )
    p.add_argument("--grid-count", type=int, default=16, help="samples on the sheet (default 16)")
    args = p.parse_args(argv)
    if not 16 <= args.image_size <= 512:
        p.error(f"--image-size {args.image_size}: choose a side between 16 and 512 pixels")
    if args.out is None and args.grid is None:
        p.error("nothing to do: give --out DIR (with --samples N and/or --eval) or --grid PNG")
    if args.out is not None and args.samples < 1 and not (args.eval or args.digits):
        p.error("--out needs --samples N (N >= 1), --eval and/or --digits")
    if args.samples < 0 or args.shard_size < 1 or args.samples_per_class < 1:
        p.error("--samples must be >= 0, --shard-size and --samples-per-class >= 1")
    if args.out is not None and args.samples:
        shards = write_world(
            args.out,
            args.samples,
            args.image_size,
            args.seed,
            args.shard_size,
            args.split,
            args.format,
            progress=True,
        )
        print(f"wrote {args.samples} samples in {len(shards)} shards: {shard_pattern(shards)}")
    if args.out is not None and args.eval:
        if (args.out / "eval").exists():
            p.error(f"{args.out / 'eval'} exists already: remove it or choose another --out")
        sets = write_eval_sets(
            args.out / "eval", args.image_size, args.seed, args.samples_per_class
        )
        for name, path in sets.items():
            print(f"wrote {name} set: {path}")
    if args.out is not None and args.digits:
        print(f"wrote digits set: {write_digits(args.out / 'eval' / 'digits', args.image_size)}")
    if args.grid is not None:
        grid = (
            make_sample(args.split, args.seed, i, args.image_size)[:2]
            for i in range(args.grid_count)
        )
        print(f"wrote sample grid: {write_grid(args.grid, grid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
