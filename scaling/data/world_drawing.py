"""Drawing the synthetic world's scenes with numpy: shapes, textures and shaded backgrounds
painted as palette indices (``render_indexed``, what the shard writer stores as an indexed PNG)
or as RGB (``render``)."""

from __future__ import annotations

import functools
import math
import random

import numpy as np

from scaling.data.world import BACKGROUNDS, COLOURS, SHAPES, TEXTURES, Scene


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in object coordinates (u right, v down, the object spans [-1, 1])."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.8)
    if shape == "ring":
        d = u * u + v * v
        return (d <= 1.0) & (d >= 0.33)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "star":
        rad = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v)  # 0 points up
        sector = 2 * math.pi / 5
        phi = np.abs((theta + sector / 2) % sector - sector / 2) / (sector / 2)
        return rad <= 1.0 - 0.58 * phi
    if shape == "heart":
        x, y = u * 1.2, -v * 1.2 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def _texture_mask(texture: str, xs: np.ndarray, ys: np.ndarray, r: float) -> np.ndarray | None:
    """Pixels painted in the darker shade; None for solid objects."""
    period = max(2.0, r / 2.2)
    if texture == "solid":
        return None
    if texture == "striped":
        return ((xs + ys) // period) % 2 == 0
    if texture == "checkered":
        return ((xs // period) + (ys // period)) % 2 == 0
    if texture == "dotted":
        fx = (xs % (2 * period)) - period
        fy = (ys % (2 * period)) - period
        return fx * fx + fy * fy <= (0.55 * period) ** 2
    raise ValueError(f"unknown texture {texture!r}; choose from {TEXTURES}")


# Backgrounds are drawn as palette indices too: BG_LEVELS shades around the base colour.
BG_LEVELS = 32
_BG_OFFSETS = np.linspace(-31, 31, BG_LEVELS, dtype=np.float32)
# a fixed noise tile (sd 12), as shade indices; scenes take random windows of it
_NOISE = np.clip(
    np.rint(np.random.default_rng(12345).normal(0, 6, (256, 256)) + BG_LEVELS / 2), 0, BG_LEVELS - 1
).astype(np.uint8)


def render_indexed(
    scene: Scene, image_size: int, rnd: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene as palette indices: ``(uint8[H, W] labels, uint8[K, 3] palette)``.

    Per-call overhead, not arithmetic, is numpy's cost at these sizes, so everything (shaded
    background, objects, texture) is painted as small integers and coloured in one lookup;
    the writer stores it as an indexed PNG directly.
    """
    s = image_size
    base = np.array(BACKGROUNDS[scene.background], np.float32) + rnd.uniform(-10, 10)
    bg_palette = base[None, :] + _BG_OFFSETS[:, None]
    if scene.bg_style == "gradient":
        ramp = _ramp(s)
        labels = np.empty((s, s), np.uint8)
        labels[:] = ramp[:, None] if rnd.random() < 0.5 else ramp[None, :]
    elif scene.bg_style == "noise":
        tile = _noise(s)
        oy, ox = rnd.randrange(tile.shape[0] - s + 1), rnd.randrange(tile.shape[1] - s + 1)
        labels = tile[oy : oy + s, ox : ox + s].copy()
    else:
        labels = np.full((s, s), BG_LEVELS // 2, np.uint8)

    palette = [bg_palette]
    # others first, the main entity last, so it is never hidden
    for ent in reversed(scene.entities):
        colour = np.array(COLOURS[ent.colour], np.float32)
        colour += np.array(
            [rnd.uniform(-18, 18), rnd.uniform(-18, 18), rnd.uniform(-18, 18)], np.float32
        )
        solid = BG_LEVELS + 2 * (len(palette) - 1)
        palette.append(np.stack([colour, 0.45 * colour]))
        pattern = _texture_pattern(ent.texture, ent.places[0][2], s) if ent.places else None
        for x, y, r in ent.places:
            ix, iy = math.floor(x), math.floor(y)
            ox, oy, inside = _object_mask(ent.shape, r, x - ix, y - iy)
            x0, y0 = ix + ox, iy + oy
            cx0, cy0 = max(x0, 0), max(y0, 0)  # clip the object's box to the image
            cx1, cy1 = min(x0 + inside.shape[1], s), min(y0 + inside.shape[0], s)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            inside = inside[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            box = labels[cy0:cy1, cx0:cx1]
            box[inside] = solid
            if pattern is not None:
                box[inside & pattern[cy0:cy1, cx0:cx1]] = solid + 1
    return labels, np.clip(np.concatenate(palette), 0, 255).astype(np.uint8)


def render(scene: Scene, image_size: int, rnd: random.Random) -> np.ndarray:
    """Draw a scene as an ``uint8[H, W, 3]`` array."""
    labels, palette = render_indexed(scene, image_size, rnd)
    return palette.take(labels, axis=0)


@functools.lru_cache(maxsize=64)
def _ramp(size: int) -> np.ndarray:
    """A gradient of background shades across the image (indices into the shades)."""
    return np.rint(np.linspace(1, BG_LEVELS - 2, size)).astype(np.uint8)


@functools.lru_cache(maxsize=32768)
def _object_mask(shape: str, r: float, fx: float, fy: float) -> tuple[int, int, np.ndarray]:
    """(x offset, y offset, inside mask) of an object centred at (fx, fy) in its pixel; cached,
    since positions and radii are quantised to quarter pixels."""
    ox, oy = math.floor(fx - r - 1), math.floor(fy - r - 1)
    xs = np.arange(ox, math.floor(fx + r + 2), dtype=np.float32)[None, :] + 0.5
    ys = np.arange(oy, math.floor(fy + r + 2), dtype=np.float32)[:, None] + 0.5
    mask = _shape_mask(shape, (xs - fx) / r, (ys - fy) / r)
    mask.setflags(write=False)
    return ox, oy, mask


@functools.lru_cache(maxsize=1024)
def _texture_pattern(texture: str, r: float, size: int) -> np.ndarray | None:
    """The whole-image pattern of darker pixels for a texture at this object scale."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    pattern = _texture_mask(texture, coords[None, :], coords[:, None], r)
    if pattern is not None:
        pattern = np.broadcast_to(pattern, (size, size)).copy()
        pattern.setflags(write=False)
    return pattern


def _noise(size: int) -> np.ndarray:
    if size <= _NOISE.shape[0]:
        return _NOISE
    reps = -(-size // _NOISE.shape[0])
    return np.tile(_NOISE, (reps, reps))
