"""Metric against training compute: frontier, power-law fit with its 90 % band, next-rung prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from scaling.analysis.plots.style import COLORS, CYCLE, figure, note, place_labels
from scaling.analysis.power_law import PowerLawFit
from scaling.analysis.predict import MetricSpec, ladder_points, law_points


def _sci(value: float, _pos=None) -> str:
    """2e+12 -> '2e12' (compact FLOP tick labels)."""
    mant, exp = f"{value:.0e}".split("e")
    return f"{mant}e{int(exp)}"


def compute_scaling(
    points: pd.DataFrame,
    spec: MetricSpec,
    fit: PowerLawFit | None = None,
    frontier: pd.DataFrame | None = None,
    next_point: tuple[str, float] | None = None,
    checks: pd.DataFrame | None = None,
    message: str = "",
) -> Figure:
    """``points``: from :func:`scaling.analysis.predict.compute_points`; y shown as fitted (error)."""
    fig, ax = figure(figsize=(11.5, 5.4))
    ax.set_title(f"{spec.fit_label} vs training compute", loc="left")
    if points.empty:
        note(ax, message or f"no finished run has both compute and '{spec.key}'")
        return fig
    if "arm" in points:  # a study's control arms and budgets are compared in their own section, not on the law
        points = ladder_points(points)
    y_all = spec.to_fit(points["value"])
    ok = y_all > 0
    stage_of = points["stage"] if "stage" in points else points["label"]
    colors = {st: CYCLE[i % len(CYCLE)] for i, st in enumerate(dict.fromkeys(stage_of[ok]))}
    shown: set[str] = set()
    for _run_id, group in points[ok].groupby("run_id", sort=False):  # a stage's seeds share its colour
        stage = stage_of[group.index[0]]
        gy = spec.to_fit(group["value"])
        ax.plot(group["flops"], gy, "-", color=colors[stage], alpha=0.35, lw=1)
        ax.scatter(group["flops"], gy, s=14, color=colors[stage], alpha=0.5,
                   label=None if stage in shown else f"{stage} (evals)")
        shown.add(stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    x_hi = float(points["flops"].max())
    if next_point is not None:
        x_hi = max(x_hi, next_point[1])
    if frontier is not None and not frontier.empty:
        ax.scatter(frontier["flops"], spec.to_fit(frontier["value"]), s=70, facecolor="none",
                   edgecolor="black", lw=1.3, zorder=4, label="stages fitted (binned compute frontier)")  # fmt: skip
    law = law_points(points)
    seeds = law[law["n_runs"] > 1]
    if not seeds.empty:  # each law point's spread over seeds
        ax.errorbar(seeds["flops"], spec.to_fit(seeds["value"]), yerr=seeds["sd"], fmt="_", ms=12, color="black",
                    capsize=4, zorder=5, label="stage mean ± sd over seeds")  # fmt: skip
    label_x, label_y, label_t = [], [], []
    if fit is not None:
        xs = np.logspace(np.log10(points["flops"].min()) - 0.1, np.log10(x_hi) + 0.15, 200)
        lo, hi = fit.band(xs)
        b_lo, b_hi = fit.exponent_interval()
        formula = fit.formula("err" if spec.higher_is_better else "y", "C", "FLOPs")
        ax.plot(xs, fit.predict(xs), color=COLORS["fit"], lw=2,
                label=f"fit: {formula}\n     exponent 90% CI [{b_lo:.3g}, {b_hi:.3g}] ({fit.interval})")  # fmt: skip
        if len(fit.boot) >= 2:
            ax.fill_between(xs, lo, hi, color=COLORS["fit"], alpha=0.15, lw=0, label=f"90% band ({fit.interval})")
        if next_point is not None:
            name, x = next_point
            y = float(fit.predict(x))
            blo, bhi = (float(v[0]) for v in fit.band(x))
            ax.errorbar([x], [y], yerr=[[max(y - blo, 0)], [max(bhi - y, 0)]], fmt="*", ms=16,
                        color=COLORS["pred"], mec="black", capsize=4, zorder=6,
                        label=f"next rung {name}: predicted {spec.key} = {float(spec.from_fit(y)):.3g}")  # fmt: skip
            label_x.append(x)
            label_y.append(y)
            label_t.append(f"{name} (planned)")
    if checks is not None and not checks.empty:
        done = checks.dropna(subset=["predicted"])
        if not done.empty:
            ax.scatter(done["flops"], spec.to_fit(done["predicted"]), marker="D", s=46, facecolor="white",
                       edgecolor=COLORS["pred"], lw=1.6, zorder=5,
                       label="held out: predicted from smaller stages")  # fmt: skip
    finals = points[points["final"] & ok & (points["label"] == stage_of)]  # one label per stage
    label_x += list(finals["flops"])
    label_y += list(spec.to_fit(finals["value"]))
    label_t += list(finals["label"])
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(spec.fit_label + " (log scale)")
    fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    xfmt = FuncFormatter(_sci)
    ax.xaxis.set_major_formatter(xfmt)
    lo, hi = ax.get_xlim()
    if hi / lo < 40:  # about a decade: label the 2x and 5x ticks too
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(xfmt)
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="both", which="both", labelsize=8.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    place_labels(ax, label_x, label_y, label_t, radii_pt=[6] * len(label_x), fontsize=8)
    if message:
        ax.text(0.99, 0.99, message, transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.35")
    return fig
