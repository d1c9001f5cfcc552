"""The synthetic world: scenes of coloured, textured shapes (drawn by ``scaling.data.world_drawing``).

A scene holds 1-3 *entities* (a group of identical objects: shape, colour, size, texture,
count) on a background. The first entity is the *main* one: it is drawn last (never hidden),
and is at least medium-sized. Everything is a pure function of a string seed, so any sample
can be regenerated alone (shards can be written in parallel and stay identical).

Some (shape, colour) combinations never occur in training scenes: they form the compositional
zero-shot set (each shape and each colour is held out exactly once, so both are still seen).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

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
