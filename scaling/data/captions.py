"""Captions for synthetic scenes, from a small grammar.

Captions vary in detail (only the main object's colour and shape, up to every entity with
size, texture, count, position, relation and background), in word order and in phrasing
(synonyms, "with stripes" vs "striped"), like alt-texts do. The words "photo", "picture",
"image" and "rendering" never occur, so the zero-shot prompts ("a photo of a {}.") are never
seen verbatim in training.
"""

from __future__ import annotations

import random

from scaling.data.world import Entity, Scene

SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
TEXTURE_ADJ = {
    "solid": ("plain", "solid"),
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot"),
    "checkered": ("checkered", "checked"),
}
TEXTURE_WITH = {"striped": "stripes", "dotted": "dots", "checkered": "a checkered pattern"}
COUNT_WORDS = {2: "two", 3: "three"}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
OPENERS_ONE = ("there is", "this scene shows", "we can see", "the drawing shows", "a scene with")
OPENERS_MANY = ("there are", "this scene shows", "we can see", "the drawing shows", "a scene with")


def plural(shape: str, count: int) -> str:
    if count == 1:
        return shape
    return shape + ("es" if shape.endswith(("ss", "sh", "ch", "x")) else "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(ent: Entity, rnd: random.Random, detail: int) -> str:
    """``detail`` 0: colour + shape; 1: some attributes; 2: all attributes."""
    with_size = detail >= 2 or (detail == 1 and rnd.random() < 0.5)
    with_texture = ent.texture != "solid" and (detail >= 2 or (detail == 1 and rnd.random() < 0.5))
    adjectives = []
    if with_size:
        adjectives.append(rnd.choice(SIZE_WORDS[ent.size]))
    suffix = ""
    if with_texture:
        if rnd.random() < 0.5:
            adjectives.append(rnd.choice(TEXTURE_ADJ[ent.texture]))
        else:
            suffix = " with " + TEXTURE_WITH[ent.texture]
    elif detail >= 2 and rnd.random() < 0.3:
        adjectives.append(rnd.choice(TEXTURE_ADJ["solid"]))
    words = [*adjectives, ent.colour, plural(ent.shape, ent.count)]
    head = COUNT_WORDS[ent.count] if ent.count > 1 else article(words[0])
    return f"{head} {' '.join(words)}{suffix}"


def position_phrase(cell: tuple[int, int], rnd: random.Random) -> str:
    row, col = ROWS[cell[0]], COLS[cell[1]]
    if row == "middle" and col == "center":
        return rnd.choice(("in the center", "in the middle"))
    if row == "middle":
        return rnd.choice((f"on the {col}", f"at the {col}", f"in the {col} part"))
    if col == "center":
        return rnd.choice((f"at the {row}", f"near the {row}", f"in the {row} part"))
    return rnd.choice((f"in the {row} {col} corner", f"at the {row} {col}"))


def relation(a: Entity, b: Entity) -> tuple[str, str]:
    """(a REL b, b REL a), from the two objects' centres (y grows downwards)."""
    (ax, ay, _), (bx, by, _) = a.places[0], b.places[0]
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return (
            ("to the left of", "to the right of")
            if dx < 0
            else ("to the right of", "to the left of")
        )
    return ("above", "below") if dy < 0 else ("below", "above")


def caption(scene: Scene, rnd: random.Random, detail: int | None = None) -> str:
    """One caption; ``detail`` None draws it (mostly terse, sometimes complete)."""
    if detail is None:
        detail = rnd.choices((0, 1, 2), weights=(0.25, 0.45, 0.3))[0]
    ents = scene.entities
    main = ents[0]
    parts = [noun_phrase(main, rnd, detail)]
    pos_front = False
    if main.count == 1 and (detail >= 2 or (detail == 1 and rnd.random() < 0.4)):
        pos = position_phrase(scene.cell, rnd)
        pos_front = rnd.random() < 0.3
        parts[0] = f"{pos}, {parts[0]}" if pos_front else f"{parts[0]} {pos}"
    n_others = len(ents) - 1 if detail >= 2 else (min(len(ents) - 1, 1) if detail == 1 else 0)
    others = [noun_phrase(e, rnd, max(detail - 1, 0)) for e in ents[1 : 1 + n_others]]

    if others and main.count == 1 and ents[1].count == 1 and not pos_front and rnd.random() < 0.5:
        rel_ab, rel_ba = relation(main, ents[1])
        if rnd.random() < 0.5:
            body = f"{parts[0]} {rel_ab} {others[0]}"
        else:
            body = f"{others[0]} {rel_ba} {parts[0]}"
        rest = others[1:]
        if rest:
            body += ", and " + " and ".join(rest)
    else:
        items = parts + others
        if not pos_front and rnd.random() < 0.3 and len(items) > 1:
            rnd.shuffle(items)
        body = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        if not pos_front and rnd.random() < 0.35:
            # "there is a red circle and two ...", "there are two ...": agrees with the first item
            opener = OPENERS_ONE if items[0].startswith(("a ", "an ")) else OPENERS_MANY
            body = f"{rnd.choice(opener)} {body}"

    if detail >= 2 or (detail == 1 and rnd.random() < 0.2):
        body += rnd.choice((" on a {} background", " against a {} background")).format(
            scene.background
        )
    return body + "."
