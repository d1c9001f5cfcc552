"""Per-sweep figures: optimisation history, parameter importances, parallel coordinates, ablation table."""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scaling.analysis.plots.style import COLORS, CYCLE, figure, note
from scaling.analysis.sweep_frame import Sweep

STATE_STYLE = {
    "COMPLETE": dict(marker="o", color=COLORS["clip"], label="complete"),
    "PRUNED": dict(marker="x", color="0.55", label="pruned (last value)"),
    "FAIL": dict(marker="v", color="#D55E00", label="failed"),
}


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}"
    return str(value)


def history(sweep: Sweep) -> Figure:
    fig, ax = figure(figsize=(7.5, 4.2))
    t = sweep.trials
    shown = t[t["objective"].notna()]
    if shown.empty:
        note(ax, f"no trial has logged '{sweep.objective}' yet")
    for state, style in STATE_STYLE.items():
        part = shown[shown["state"] == state]
        if not part.empty:
            ax.scatter(part["trial"], part["objective"], s=36, zorder=3, **style)
    done = sweep.complete.sort_values("trial")
    if not done.empty:
        best = done["objective"].cummax() if sweep.maximize else done["objective"].cummin()
        ax.step(done["trial"], best, where="post", color=COLORS["fit"], lw=2, label="best so far", zorder=2)
        ax.legend(loc="best")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{sweep.objective} ({'higher' if sweep.maximize else 'lower'} is better)")
    ax.set_title(f"Optimisation history — study '{sweep.study}'", loc="left")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def importance(sweep: Sweep, values: dict[str, float]) -> Figure:
    fig, ax = figure(figsize=(7.0, 0.5 * max(len(values), 3) + 1.6))
    ax.set_title(f"Parameter importance (fANOVA) — '{sweep.study}'", loc="left")
    if not values:
        note(ax, "needs at least 3 complete trials\nand one varied parameter")
        return fig
    names = list(values)[::-1]
    vals = [values[n] for n in names]
    bars = ax.barh(names, vals, color=COLORS["clip"], alpha=0.8)
    for bar, v in zip(bars, vals, strict=True):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{v:.2f}", va="center", fontsize=8.5)
    ax.set_xlim(0, max(1.0, max(vals) * 1.15))
    ax.set_xlabel(f"share of the variance of {sweep.objective}")
    ax.grid(axis="y", visible=False)
    return fig


def _axis_positions(series: pd.Series, spec: dict) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped to [0, 1] and the (position, label) ticks of that axis."""
    if pd.api.types.is_numeric_dtype(series) and spec.get("type") != "categorical":
        v = series.to_numpy(float)
        use_log = bool(spec.get("log")) and np.nanmin(v) > 0
        f = np.log10 if use_log else (lambda a: a)
        lo, hi = np.nanmin(f(v)), np.nanmax(f(v))
        span = hi - lo or 1.0
        pos = (f(v) - lo) / span
        inv = (lambda p: 10 ** (lo + p * span)) if use_log else (lambda p: lo + p * span)
        return pos, [(p, _fmt(float(inv(p)))) for p in (0.0, 0.5, 1.0)]
    cats = spec.get("choices") or sorted(series.astype(str).unique())
    cats = [c for c in cats if c in set(series.astype(str))] or cats
    where = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return series.astype(str).map(where).to_numpy(float), [(where[c], c) for c in cats]


def parallel_coordinates(sweep: Sweep) -> Figure:
    done = sweep.complete
    cols = [*sweep.hp, "objective"]
    fig, ax = figure(figsize=(max(6.5, 1.9 * len(cols)), 4.6))
    ax.set_title(f"Parallel coordinates — '{sweep.study}' (colour: {sweep.objective})", loc="left")
    if done.empty or not sweep.hp:
        note(ax, "no complete trial with sampled parameters yet")
        return fig
    positions, ticks = [], []
    for c in cols:
        pos, tk = _axis_positions(done[c], sweep.space.get(c, {}))
        positions.append(pos)
        ticks.append(tk)
    pos = np.array(positions)  # (axes, trials)
    obj = done["objective"].to_numpy(float)
    norm = mpl.colors.Normalize(vmin=np.nanmin(obj), vmax=np.nanmax(obj) if np.ptp(obj) else np.nanmin(obj) + 1)
    cmap = mpl.colormaps["viridis" if sweep.maximize else "viridis_r"]
    order = np.argsort(obj if sweep.maximize else -obj)  # best drawn last, on top
    xs = np.arange(len(cols))
    for j in order:
        ax.plot(xs, pos[:, j], color=cmap(norm(obj[j])), lw=1.6, alpha=0.85)
    for i, tk in enumerate(ticks):
        ax.axvline(i, color="0.3", lw=0.8)
        for p, label in tk:
            ax.text(i + 0.04, p, label, fontsize=7.5, va="center", ha="left",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))  # fmt: skip
    ax.set_xticks(xs, [c if c != "objective" else sweep.objective for c in cols], rotation=0, fontsize=8.5)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(cols) - 0.5)
    ax.set_ylim(-0.06, 1.06)
    ax.grid(False)
    ax.spines["left"].set_visible(False)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=sweep.objective, pad=0.01)
    return fig


def ablation_table(sweep: Sweep, max_rows: int = 15) -> Figure:
    """The trials as a table figure, best first (by the objective), failed/pruned at the end."""
    t = sweep.trials.copy()
    t["_rank"] = t["objective"] * (-1 if sweep.maximize else 1)
    t["_done"] = (t["state"] == "COMPLETE").astype(int)
    t = t.sort_values(["_done", "_rank"], ascending=[False, True]).head(max_rows)
    cols = ["trial", "state", *sweep.hp, "objective"]
    header = ["trial", "state", *sweep.hp, sweep.objective]
    cells = [[_fmt(v) if c != "trial" else str(int(v)) for c, v in zip(cols, row, strict=True)]
             for row in t[cols].itertuples(index=False)]  # fmt: skip
    fig, ax = figure(figsize=(max(6.0, 1.55 * len(cols)), 0.3 * (len(cells) + 1) + 0.7))
    ax.axis("off")
    ax.set_title(f"Ablation table — '{sweep.study}' (best first)", loc="left")
    if not cells:
        note(ax, "no trials")
        return fig
    table = ax.table(cellText=cells, colLabels=header, bbox=[0, 0, 1, 1], cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    best = sweep.best()
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor("0.85")
        if r == 0:
            cell.set_facecolor("#E8EEF4")
            cell.set_text_props(weight="bold")
        elif best is not None and cells[r - 1][0] == str(int(best["trial"])):
            cell.set_facecolor("#FFF1D6")
    return fig


__all__ = ["CYCLE", "ablation_table", "history", "importance", "parallel_coordinates"]
