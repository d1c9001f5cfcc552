"""What the synthetic world lets a proxy tower learn: the main object's shape and colour, supervised.

    python benchmarks/probe_world.py                         # E14 proxy tower, 12k scenes, 1 pass
    python benchmarks/probe_world.py --rung 18B --passes 4   # 4 passes over the same scenes
    python benchmarks/probe_world.py --tower cnn --single --solid --passes 8

A CLIP stage learns an attribute only as fast as its vision tower can; this measures that speed
with the strongest signal there is: two linear heads (8 shapes, 8 colours) on the tower, trained
with cross-entropy on the training world's scenes (AdamW, one-cycle lr), scored on single-object
scenes of their own seed stream. ``--tower cnn`` is a 3-layer convnet for comparison (its inductive
bias for shapes is the most a small tower could bring); ``--single`` / ``--solid`` simplify the
training scenes (one object, no texture). Prints shape and colour accuracy (chance 12.5 %) after
each quarter of the run, and the run's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
from torch import nn

from scaling.data import world
from scaling.data.transforms import normalize_batch
from scaling.data.world_drawing import render
from scaling.models.build import build_vision
from scaling.models.registry import get_rung


def scenes(split: str, n: int, size: int, single: bool, solid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(float[n, 3, S, S] images, long[n, 2] (shape, colour) of the main object)``."""
    images, labels = [], []
    for i in range(n):
        rnd = world.sample_rng(split, 0, i)
        scene = world.sample_scene(rnd, size, single=single)
        if solid:
            for ent in scene.entities:
                ent.texture = "solid"
        images.append(render(scene, size, rnd))
        main = scene.entities[0]
        labels.append((world.SHAPES.index(main.shape), world.COLOUR_NAMES.index(main.colour)))
    return normalize_batch(images), torch.tensor(labels)


def convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rung", default="E14", help="proxy rung whose vision tower is probed (default E14)")
    p.add_argument("--tower", choices=("proxy", "cnn"), default="proxy")
    p.add_argument("--patch-size", type=int, help="override the proxy tower's patch size")
    p.add_argument("--samples", type=int, default=12000, help="training scenes (default: clip@E14's 12k)")
    p.add_argument("--passes", type=int, default=1, help="passes over the training scenes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--single", action="store_true", help="train on one-object scenes")
    p.add_argument("--solid", action="store_true", help="train without textures")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    spec = get_rung(args.rung, proxy=True).vision
    if args.patch_size:
        spec = dataclasses.replace(spec, patch_size=args.patch_size)
    size = spec.image_size
    x_train, y_train = scenes("train", args.samples, size, args.single, args.solid)
    x_test, y_test = scenes("probe-test", 1000, size, True, False)
    tower = convnet() if args.tower == "cnn" else build_vision(spec)
    with torch.no_grad():
        width = tower(x_train[:2]).shape[-1]
    head = nn.Linear(width, len(world.SHAPES) + len(world.COLOUR_NAMES))
    params = [*tower.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    steps = args.passes * args.samples // args.batch_size
    if steps < 10:
        p.error(f"--samples x --passes gives {steps} steps of {args.batch_size}; the probe needs at least 10")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    what = f"{args.tower} tower" + (f" of {args.rung} ({spec.width} wide, {spec.depth} deep, patch {spec.patch_size})"
                                    if args.tower == "proxy" else "")
    print(f"{what}; {args.samples} scenes x {args.passes}, batch {args.batch_size}, {steps} steps, lr {args.lr:g}"
          f"{', single' if args.single else ''}{', solid' if args.solid else ''}")
    n_shapes = len(world.SHAPES)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.arange(step * args.batch_size, (step + 1) * args.batch_size) % args.samples
        out = head(tower(x_train[idx]))
        loss = (nn.functional.cross_entropy(out[:, :n_shapes], y_train[idx, 0])
                + nn.functional.cross_entropy(out[:, n_shapes:], y_train[idx, 1]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 4) == 0 or step == steps - 1:
            with torch.no_grad():
                pred = head(tower(x_test))
            shape = (pred[:, :n_shapes].argmax(1) == y_test[:, 0]).float().mean()
            colour = (pred[:, n_shapes:].argmax(1) == y_test[:, 1]).float().mean()
            print(f"  step {step + 1:5d} ({(step + 1) * args.batch_size:7d} samples): shape {100 * shape:5.1f} %  "
                  f"colour {100 * colour:5.1f} %  (chance 12.5 %)", flush=True)
    print(f"wall {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
