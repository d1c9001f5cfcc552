"""The synthetic world: scenes of coloured, textured shapes, drawn with numpy.

A scene holds 1-3 *entities* (a group of identical objects: shape, colour, size, texture,
count) on a background. The first entity is the *main* one: it is drawn last (never hidden),
and is at least medium-sized. Everything is a pure function of a string seed, so any sample
can be regenerated alone (shards can be written in parallel and stay identical).

Some (shape, colour) combinations never occur in training scenes: they form the compositional
zero-shot set (each shape and each colour is held out exactly once, so both are still seen).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "heart")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 180, 60),
    "cyan": (40, 205, 225),
    "blue": (45, 75, 225),
    "purple": (145, 55, 205),
    "white": (240, 240, 240),
}
COLOUR_NAMES = tuple(COLOURS)
# Dark, unsaturated backgrounds, so that every object colour stands out.
BACKGROUNDS = {
    "black": (15, 15, 18),
    "gray": (95, 95, 100),
    "brown": (90, 60, 35),
    "navy": (20, 25, 70),
}
SIZES = {"small": 0.10, "medium": 0.16, "large": 0.24}  # radius as a fraction of the side
TEXTURES = ("solid", "striped", "dotted", "checkered")

# shape i is never drawn in colour (3 i + 1) mod 8 in training: a bijection, since gcd(3, 8) = 1.
HELD_OUT = frozenset(
    (s, COLOUR_NAMES[(3 * i + 1) % len(COLOUR_NAMES)]) for i, s in enumerate(SHAPES)
)
SEEN_COMBOS = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES if (s, c) not in HELD_OUT)
ALL_COMBOS = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES)


@dataclass
class Entity:
    shape: str
    colour: str
    size: str
    texture: str
    count: int
    # (x, y, radius) in pixels, one per drawn object
    places: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class Scene:
    background: str
    bg_style: str  # flat | gradient | noise
    entities: list[Entity]
    cell: tuple[int, int]  # main entity's (row, col) in a 3 x 3 grid

    def to_json(self) -> dict:
        # by hand: dataclasses.asdict deep-copies and cost as much as drawing the scene
        ents = [
            {
                "shape": e.shape,
                "colour": e.colour,
                "size": e.size,
                "texture": e.texture,
                "count": e.count,
                "places": e.places,
            }
            for e in self.entities
        ]
        return {
            "background": self.background,
            "bg_style": self.bg_style,
            "cell": self.cell,
            "entities": ents,
        }


def sample_rng(split: str, seed: int, index: int) -> random.Random:
    """The per-sample generator: string seeding is stable across Python versions and platforms."""
    return random.Random(f"{split}/{seed}/{index}")


def _weighted(rnd: random.Random, items: dict):
    return rnd.choices(list(items), weights=list(items.values()))[0]


def sample_scene(
    rnd: random.Random,
    image_size: int,
    *,
    combos: tuple[tuple[str, str], ...] = SEEN_COMBOS,
    max_entities: int = 3,
    single: bool = False,
) -> Scene:
    """Draw a scene description; ``single`` gives one large-ish object alone (classification)."""
    n = 1 if single else _weighted(rnd, {1: 0.35, 2: 0.4, 3: 0.25})
    n = min(n, max_entities)
    used: set[tuple[str, str]] = set()
    entities: list[Entity] = []
    for i in range(n):
        shape, colour = rnd.choice(combos)
        while (shape, colour) in used:
            shape, colour = rnd.choice(combos)
        used.add((shape, colour))
        count = 1 if single else _weighted(rnd, {1: 0.7, 2: 0.2, 3: 0.1})
        if i == 0:
            size = rnd.choice(("medium", "large"))
        else:
            size = _weighted(rnd, {"small": 0.5, "medium": 0.35, "large": 0.15})
        if count > 1 and size == "large":
            size = "medium"
        texture = _weighted(
            rnd, {"solid": 0.55, "striped": 0.15, "dotted": 0.15, "checkered": 0.15}
        )
        entities.append(Entity(shape, colour, size, texture, count))
    cell = (rnd.randrange(3), rnd.randrange(3))
    _place(rnd, entities, cell, image_size)
    return Scene(
        background=rnd.choice(list(BACKGROUNDS)),
        bg_style=_weighted(rnd, {"flat": 0.4, "gradient": 0.3, "noise": 0.3}),
        entities=entities,
        cell=cell,
    )


def _place(rnd: random.Random, entities: list[Entity], cell: tuple[int, int], size: int) -> None:
    placed: list[tuple[float, float, float]] = []

    def free(x: float, y: float, r: float) -> bool:
        return all(math.hypot(x - px, y - py) > 0.9 * (r + pr) for px, py, pr in placed)

    for i, ent in enumerate(entities):
        r = max(round(SIZES[ent.size] * size * rnd.uniform(0.9, 1.1) * 4) / 4, 1.0)
        for _ in range(ent.count):
            for _attempt in range(12):
                if i == 0 and ent.count == 1:
                    # the main object sits in its grid cell (the caption may name it)
                    row, col = cell
                    x = (col + rnd.uniform(0.25, 0.75)) * size / 3
                    y = (row + rnd.uniform(0.25, 0.75)) * size / 3
                else:
                    x, y = rnd.uniform(0, size), rnd.uniform(0, size)
                x = min(max(x, r), size - r)
                y = min(max(y, r), size - r)
                if free(x, y, r):
                    break
            # quarter-pixel grid: renders look the same, and object masks can be cached
            x, y = round(x * 4) / 4, round(y * 4) / 4
            placed.append((x, y, r))
            ent.places.append((x, y, r))


# --- drawing -------------------------------------------------------------------------------


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
