"""EVA-CLIP-18B Figure 1 style: zero-shot top-1 against total parameters, bubble area ∝ compute.

The published panels show the EVA models beside the peers the EVA-CLIP-18B paper evaluates
(its Tables 1-2: OpenCLIP, DFN, InternVL), the peers with dashed outlines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter

from scaling.analysis import published
from scaling.analysis.plots.style import COLORS, figure, human, note, place_labels

MAX_AREA = 2600.0  # points^2 of the largest bubble in a panel
MIN_AREA = 40.0
PEER_COLORS = {"OpenCLIP": "#56B4E9", "DFN": "#009E73", "InternVL": "#CC79A7"}


def _color(family: str) -> str:
    return COLORS.get(family) or PEER_COLORS.get(family, "0.5")


def _areas(values: np.ndarray, vmax: float) -> np.ndarray:
    # Area proportional to the value, as in the paper's figure; a floor keeps tiny runs visible.
    return np.clip(values / vmax * MAX_AREA, MIN_AREA, None)


def _exp_label(value: float) -> str:
    exp = round(math.log10(value))
    return f"$10^{{{exp}}}$ FLOPs"


def _size_legend(ax, vmax: float) -> None:
    """Reference bubbles (powers of ten of forward FLOPs x samples) in the lower right corner."""
    top = 10 ** math.floor(math.log10(vmax))
    refs = [top / 100, top / 10, top]
    areas = [float(_areas(np.array([r]), vmax)[0]) for r in refs]
    handles = [ax.scatter([], [], s=a, facecolor="none", edgecolor="0.45") for a in areas]
    # every entry as tall as the largest reference circle (diameter in points / font size)
    height = max(0.7, 2 * math.sqrt(max(areas) / math.pi) / 7.5)
    leg = ax.legend(handles, [_exp_label(r) for r in refs], title="area ∝ forward FLOPs × samples",
                    loc="lower right", labelspacing=0.5, handleheight=height, handlelength=height,
                    borderpad=0.8, handletextpad=0.8,
                    title_fontsize=7.5, fontsize=7.5, scatterpoints=1, frameon=True,
                    framealpha=0.9, edgecolor="0.85")  # fmt: skip
    ax.add_artist(leg)


def _family_legend(ax, families) -> None:
    handles = [ax.scatter([], [], s=60, color=_color(f), alpha=0.6,
                          edgecolor="0.2" if f in PEER_COLORS else "none",
                          linestyle="--" if f in PEER_COLORS else "-") for f in families]
    leg = ax.legend(handles, list(families), loc="upper left", fontsize=7.5, handletextpad=0.3)
    ax.add_artist(leg)


def _legend_boxes(ax) -> list:
    renderer = ax.figure.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in ax.artists + [c for c in ax.get_children()
            if c.__class__.__name__ == "Legend"]]  # fmt: skip


def _log_axis(ax) -> None:
    """Log x axis labelled 100M / 1B / 10B; within one decade, minor ticks at 2 and 5 labelled too."""
    ax.xaxis.set_major_formatter(lambda v, _: human(v))
    lo, hi = ax.get_xlim()
    if hi / lo < 30:
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(lambda v, _: human(v))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _panel(ax, df: pd.DataFrame, y: str, title: str, ylabel: str, vmax: float) -> tuple:
    x = df["total_params_m"].to_numpy(float) * 1e6
    yv = df[y].to_numpy(float)
    size = df["gflops_x_samples"].to_numpy(float) * 1e9
    areas = _areas(size, vmax)
    colors = [_color(f) for f in df["family"]]
    peer = df["peer"].to_numpy(bool) if "peer" in df else np.zeros(len(df), bool)
    for sel, edge, style in ((~peer, "white", "-"), (peer, "0.2", "--")):
        if sel.any():
            ax.scatter(x[sel], yv[sel], s=areas[sel], c=[c for c, s in zip(colors, sel, strict=True) if s],
                       alpha=0.55, edgecolor=edge, linewidth=1.2, linestyle=style, zorder=3)
    ax.scatter(x, yv, s=8, c="black", zorder=4)
    ax.set_xscale("log")
    ax.set_xlim(x.min() / 2.5, x.max() * 4)
    pad = max(1.0, (np.nanmax(yv) - np.nanmin(yv)) * 0.25)
    ax.set_ylim(np.nanmin(yv) - 2.2 * pad, np.nanmax(yv) + pad)
    ax.set_xlabel("total parameters (image + text)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    _log_axis(ax)
    _size_legend(ax, vmax)
    _family_legend(ax, dict.fromkeys(df["family"]))
    radii = np.sqrt(areas / math.pi)
    return (ax, x, yv, list(df["model"]), radii)


def published_panels(axes, df27: pd.DataFrame, df_in1k: pd.DataFrame) -> list[tuple]:
    # One bubble scale for both panels, so that equal compute reads as equal area.
    vmax = 1e9 * float(max(df27["gflops_x_samples"].max(), df_in1k["gflops_x_samples"].max()))
    return [
        _panel(axes[0], df27, "img_cls_avg27", "Published: 27-set average",
               "zero-shot top-1, avg. of 27 sets (%)", vmax),
        _panel(axes[1], df_in1k, "in1k_zero_shot", "Published: ImageNet-1K",
               "ImageNet-1K zero-shot top-1 (%)", vmax),
    ]  # fmt: skip


def runs_panel(ax, runs: pd.DataFrame, metric: str) -> tuple | None:
    """The user's CLIP runs: metric vs parameters, bubble area ∝ training FLOPs."""
    col = f"metrics.{metric}"
    ok = runs.dropna(subset=[c for c in ("n_params", "flops", col) if c in runs]) if col in runs else runs.iloc[0:0]
    ax.set_title("Your runs", loc="left")
    if ok.empty:
        note(ax, f"no finished CLIP stage with '{metric}'\nand a known size yet")
        return None
    x = ok["n_params"].to_numpy(float)
    y = ok[col].to_numpy(float)
    flops = ok["flops"].to_numpy(float) / 3.0  # training FLOPs = 3 x forward
    areas = _areas(flops, float(flops.max()))
    ax.scatter(x, y, s=areas, c=COLORS["runs"], alpha=0.55, edgecolor="white", linewidth=1.2, zorder=3)
    ax.scatter(x, y, s=8, c="black", zorder=4)
    ax.set_xscale("log")
    ax.set_xlim(x.min() / 2.5, x.max() * 4)
    span = max(float(np.ptp(y)), 0.05 * max(abs(float(y.max())), 1e-3))
    low = y.min() - 1.2 * span
    ax.set_ylim(max(low, 0.0) if y.min() >= 0 else low, y.max() + 0.6 * span)
    ax.set_xlabel("total parameters (image + text)")
    ax.set_ylabel(f"{metric}")
    _log_axis(ax)
    _size_legend(ax, float(flops.max()))
    labels = [str(v) for v in ok.get("label", ok["run_name"])]
    return (ax, x, y, labels, np.sqrt(areas / math.pi))


def bubble_chart(runs: pd.DataFrame | None = None, metric: str = "eval/synth_cls/top1") -> Figure:
    """Published EVA-CLIP models (27-set average and IN-1K panels) and, given ``runs``, yours."""
    n = 2 if runs is None else 3
    fig, axes = figure(1, n, figsize=(5.6 * n, 4.8))
    labels = published_panels(axes, published.bubble_frame("img_cls_avg27"),
                              published.bubble_frame("in1k_zero_shot"))  # fmt: skip
    if runs is not None:
        labels.append(runs_panel(axes[2], runs, metric))
    fig.suptitle("Zero-shot classification vs model size (EVA-CLIP-18B Fig. 1 style)", fontweight="bold")
    fig.canvas.draw()  # one layout pass, then labels are placed in final display coordinates
    fig.labels = []  # the label artists per panel, for checks
    for spec in labels:
        if spec is not None:
            ax, x, y, texts, radii = spec
            fig.labels.append(place_labels(ax, x, y, texts, radii_pt=radii, avoid=_legend_boxes(ax),
                                           draw=False, fontsize=8))  # fmt: skip
    return fig
