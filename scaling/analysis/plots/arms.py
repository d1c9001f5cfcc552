"""A study's gain against its budget: mim_init minus each control, with the 90 % interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from scaling.analysis.plots.style import CYCLE, figure, note

MARKERS = {"shared": "o", "reseeded": "s"}


def _budget_ticks(ax, values: pd.Series) -> None:
    """Tick the measured budgets themselves (2k, 4k, ...): on a log axis spanning less than a decade
    matplotlib labels its minor ticks, whose labels run into each other."""
    ticks = sorted({float(v) for v in values.dropna() if v > 0})
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))


def gain_curves(by_metric: dict[str, pd.DataFrame]) -> Figure:
    """One column per metric (``scaling.analysis.arms.gains`` tables); the gain against mim_init's
    CLIP samples (top row) and against its total compute, CLIP + the stages it starts from (bottom)."""
    metrics = list(by_metric)
    fig, axes = figure(2, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 7.2), squeeze=False)
    for col, metric in enumerate(metrics):
        table = by_metric[metric]
        for row, (x, label) in enumerate((("samples", "mim_init's CLIP samples"),
                                          ("compute", "mim_init's total training FLOPs (CLIP + inherited)"))):
            ax = axes[row][col]
            ax.axhline(0.0, color="0.4", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("gain (MIM init helps > 0)")
            ax.set_title(f"{metric}", loc="left")
            if table.empty:
                note(ax, "no arms to compare")
                continue
            groups = list(table.groupby(["stage", "control", "upstream"], sort=False))
            for i, ((stage, control, upstream), g) in enumerate(groups):
                g = g.sort_values(x)
                err = np.vstack([(g["gain"] - g["low"]).clip(lower=0), (g["high"] - g["gain"]).clip(lower=0)])
                ax.errorbar(g[x], g["gain"], yerr=np.nan_to_num(err), marker=MARKERS.get(upstream, "o"), capsize=3,
                            color=CYCLE[i % len(CYCLE)], label=f"{stage} vs {control} ({upstream})")
            if x == "samples":
                _budget_ticks(ax, table[x])
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # under the panels, where it covers no point of any of them
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 3))
    fig.suptitle("Weak-to-strong gain against budget (90 % t intervals over seeds)")
    return fig
