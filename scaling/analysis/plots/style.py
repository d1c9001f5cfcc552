"""Shared look of the analysis figures, saving (PNG + SVG) and overlap-free point labels."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")  # files only outside notebooks; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "svg.fonttype": "none",
}
# Colour per family / stage kind, colour-blind safe (Okabe-Ito).
COLORS = {
    "EVA-01-CLIP": "#999999",
    "EVA-02-CLIP": "#0072B2",
    "EVA-CLIP": "#D55E00",
    "mim": "#009E73",
    "clip": "#0072B2",
    "teacher": "#CC79A7",
    "runs": "#E69F00",
    "fit": "#D55E00",
    "pred": "#CC79A7",
}
CYCLE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def figure(*args, **kwargs) -> tuple[Figure, object]:
    """``plt.subplots`` under the project's style, with constrained layout."""
    with plt.rc_context(RC):
        kwargs.setdefault("layout", "constrained")
        return plt.subplots(*args, **kwargs)


def save(fig: Figure, out_dir: str | os.PathLike, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``name.<format>`` (PNG and SVG by default) into ``out_dir``; close the figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{fmt}" for fmt in formats]
    with plt.rc_context(RC):
        for path in paths:
            # constrained layout already fits everything; no second 'tight' layout pass
            fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths


def note(ax, text: str) -> None:
    """A centred grey message in an empty panel (e.g. 'no finished runs')."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4",
            fontsize=9, wrap=True)  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


# Candidate label offsets in points, tried in order: right, left, above, below, diagonals, further.
_OFFSETS = [(8, 0), (-8, 0), (0, 9), (0, -9), (8, 8), (-8, 8), (8, -8), (-8, -8),
            (16, 0), (-16, 0), (0, 18), (0, -18), (16, 14), (-16, 14), (16, -14), (-16, -14)]  # fmt: skip
_ALIGN = {1: ("left", "center"), -1: ("right", "center")}


def _align(dx: float, dy: float) -> tuple[str, str]:
    if dx:
        return _ALIGN[1 if dx > 0 else -1][0], "bottom" if dy > 0 else "top" if dy < 0 else "center"
    return "center", "bottom" if dy > 0 else "top"


def place_labels(
    ax,
    xs: Sequence[float],
    ys: Sequence[float],
    texts: Sequence[str],
    radii_pt: Sequence[float] | None = None,
    avoid: Sequence[Bbox] = (),
    draw: bool = True,
    **text_kw,
) -> list:
    """Label points so that no two labels (nor a label and a marker) overlap.

    Greedy: for each point, in order, the first candidate offset (scaled by the marker radius)
    whose text box stays inside the axes and clear of earlier labels and of all markers wins.
    Returns the text artists.
    """
    fig = ax.figure
    if draw:
        fig.canvas.draw()  # fixes the layout so that display coordinates are final
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72.0
    radii = list(radii_pt) if radii_pt is not None else [4.0] * len(xs)
    centers = ax.transData.transform(list(zip(xs, ys, strict=True))) if len(xs) else []
    markers = [Bbox.from_extents(cx - r * to_px, cy - r * to_px, cx + r * to_px, cy + r * to_px)
               for (cx, cy), r in zip(centers, radii, strict=True)]  # fmt: skip
    axes_box = ax.get_window_extent(renderer)
    placed: list[Bbox] = list(avoid)
    artists = []
    for i, text in enumerate(texts):
        chosen, fallback = None, None
        for dx, dy in _OFFSETS:
            pad = radii[i]
            offset = (dx + (pad if dx > 0 else -pad if dx < 0 else 0),
                      dy + (pad if dy > 0 else -pad if dy < 0 else 0))  # fmt: skip
            ha, va = _align(dx, dy)
            probe = ax.annotate(text, (xs[i], ys[i]), xytext=offset, textcoords="offset points",
                                ha=ha, va=va, **text_kw)  # fmt: skip
            box = probe.get_window_extent(renderer).expanded(1.04, 1.1)
            probe.remove()
            inside = axes_box.contains(box.x0, box.y0) and axes_box.contains(box.x1, box.y1)
            clash = any(box.overlaps(b) for b in placed) or any(
                box.overlaps(m) for j, m in enumerate(markers) if j != i
            )
            if fallback is None and inside:
                fallback = (offset, ha, va, box)
            if inside and not clash:
                chosen = (offset, ha, va, box)
                break
        offset, ha, va, box = chosen or fallback or ((8, 0), "left", "center", Bbox.null())
        artist = ax.annotate(text, (xs[i], ys[i]), xytext=offset, textcoords="offset points",
                             ha=ha, va=va, **text_kw)  # fmt: skip
        placed.append(box)
        artists.append(artist)
    return artists


def overlapping_labels(ax, artists: Sequence) -> list[tuple[str, str]]:
    """Pairs of label texts whose boxes overlap (used by tests to check the figures)."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = [(a.get_text(), a.get_window_extent(renderer)) for a in artists]
    return [(ta, tb) for i, (ta, ba) in enumerate(boxes) for tb, bb in boxes[i + 1:] if ba.overlaps(bb)]


def human(value: float, unit: str = "") -> str:
    """1.2e9 -> '1.2B' (params, samples); keeps 3 significant digits."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"
