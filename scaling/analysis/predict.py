"""Metric-vs-compute points, frontier fits, next-rung predictions and predicted-vs-achieved.

Accuracies are fitted as error rates (``1 - top1``, or ``100 - top1`` for percentages), which fall
as a power law of compute; losses are fitted as they are. Points are every evaluation of every run,
placed at the compute spent up to it (``train/samples_seen`` at that step x the run's FLOPs per
sample), so a ladder of a few stages that evaluates during training still gives a frontier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.analysis import load
from scaling.analysis.fits import FitError, PowerLawFit, binned_frontier, fit_power_law

PRED_PREFIX = "pred/"


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is fitted: accuracies as error rates, anything else as is."""

    key: str
    higher_is_better: bool
    percent: bool = False

    @classmethod
    def for_key(cls, key: str, values: pd.Series | None = None) -> MetricSpec:
        higher = any(tag in key.lower() for tag in ("top1", "top5", "acc", "recall", "_r1", "_r5", "_r10"))
        percent = bool(higher and values is not None and len(values) and float(np.nanmax(values)) > 1.5)
        return cls(key, higher, percent)

    @property
    def fit_label(self) -> str:
        return f"error (1 - {self.key})" if self.higher_is_better else self.key

    def to_fit(self, y):
        if not self.higher_is_better:
            return np.asarray(y, dtype=float)
        return (100.0 if self.percent else 1.0) - np.asarray(y, dtype=float)

    def from_fit(self, y):
        return self.to_fit(y) if self.higher_is_better else np.asarray(y, dtype=float)


def compute_points(uri: str | None, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per evaluation of ``metric``: ``run_id``, ``label``, ``flops``, ``value``, ``final``."""
    rows = []
    col = f"metrics.{metric}"
    for _, run in runs.iterrows():
        flops, final_value = run.get("flops"), run.get(col)
        if flops is None or pd.isna(flops) or final_value is None or pd.isna(final_value):
            continue
        label = run.get("label") or run.get("run_name") or run["run_id"][:8]
        hist = load.metric_history(uri, run["run_id"], metric)
        samples = load.metric_history(uri, run["run_id"], "train/samples_seen")
        total = run.get("metrics.train/samples_seen")
        if hist.empty or samples.empty or total is None or pd.isna(total) or float(total) <= 0:
            rows.append((run["run_id"], label, float(flops), float(final_value), True))
            continue
        per_sample = float(flops) / float(total)
        seen = np.interp(hist["step"], samples["step"], samples["value"])
        for i, (s, v) in enumerate(zip(seen, hist["value"], strict=True)):
            if s > 0:
                rows.append((run["run_id"], label, per_sample * s, float(v), i == len(hist) - 1))
    return pd.DataFrame(rows, columns=["run_id", "label", "flops", "value", "final"])


def fit_frontier(
    points: pd.DataFrame, spec: MetricSpec, bins_per_decade: int = 4, bootstrap: int = 200
) -> tuple[PowerLawFit, pd.DataFrame]:
    """Power law through the binned compute-Pareto frontier of ``points``; returns (fit, frontier)."""
    if points.empty:
        raise FitError("no points with both compute and the metric")
    err = spec.to_fit(points["value"])
    idx = binned_frontier(points["flops"].to_numpy(float), err, bins_per_decade, minimize=True)
    front = points.iloc[idx]
    fit = fit_power_law(front["flops"], spec.to_fit(front["value"]), bootstrap=bootstrap)
    return fit, front


def next_rung(runs: pd.DataFrame) -> tuple[str, float] | None:
    """(rung, planned CLIP training FLOPs) of the rung after the largest finished CLIP rung.

    The planned compute uses the largest run's samples and patch dropout (proxy if it was).
    None when the cost model or the rung registry is missing or the ladder is at its top.
    """
    clip = runs[(runs["kind"] == "clip") & runs["flops"].notna()] if "kind" in runs else runs.iloc[0:0]
    if clip.empty:
        return None
    try:
        from scaling import costs
        from scaling.models.registry import LADDER_ORDER, get_rung

        last = clip.sort_values("flops").iloc[-1]
        proxy = load._truthy(last.get("proxy") or last.get("params.stage.proxy") or "false")
        current = get_rung(str(last["rung"]), proxy=proxy)
        if current.alias not in LADDER_ORDER:
            return None
        pos = LADDER_ORDER.index(current.alias)
        if pos + 1 >= len(LADDER_ORDER):
            return None
        name = LADDER_ORDER[pos + 1]
        samples = last.get("metrics.train/samples_seen")
        if samples is None or pd.isna(samples):
            samples = float(last.get("params.train.samples"))
        dropout = float(last.get("params.model.patch_dropout") or 0.0)
        flops = costs.train_flops(get_rung(name, proxy=proxy), "clip", float(samples), patch_dropout=dropout)
        return name, float(flops)
    except Exception:  # no cost model / unknown rung: no next-rung marker
        return None


def predicted_vs_achieved(points: pd.DataFrame, runs: pd.DataFrame, spec: MetricSpec) -> pd.DataFrame:
    """For each run: the metric predicted by the fit on the runs with less compute, and achieved.

    Columns: ``run_id``, ``label``, ``flops``, ``predicted``, ``low``, ``high``, ``achieved``,
    ``n_fit``, ``formula``; ``predicted`` is NaN where too few smaller runs exist.
    """
    rows = []
    finals = points[points["final"]].sort_values("flops")
    for _, final in finals.iterrows():
        smaller_runs = finals[finals["flops"] < final["flops"]]["run_id"]
        prior = points[points["run_id"].isin(smaller_runs)]
        pred = low = high = np.nan
        n_fit, formula = 0, ""
        try:
            fit, front = fit_frontier(prior, spec)
            lo, hi = fit.band(final["flops"])
            pred = float(spec.from_fit(fit.predict(final["flops"])))
            a, b = spec.from_fit(lo)[0], spec.from_fit(hi)[0]
            low, high = float(min(a, b)), float(max(a, b))
            n_fit, formula = len(front), fit.formula("err" if spec.higher_is_better else "y")
        except FitError:
            pass
        rows.append(dict(run_id=final["run_id"], label=final["label"], flops=final["flops"],
                         predicted=pred, low=low, high=high, achieved=final["value"],
                         n_fit=n_fit, formula=formula))  # fmt: skip
    return pd.DataFrame(rows, columns=["run_id", "label", "flops", "predicted", "low", "high",
                                       "achieved", "n_fit", "formula"])  # fmt: skip


def record_prediction(
    uri: str | None, run_id: str, metric: str, predicted: float, formula: str | None = None
) -> None:
    """Log ``pred/<metric>`` as a metric and a tag on ``run_id`` (and the fit's formula as a tag)."""
    mlc = load.client(uri)
    key = PRED_PREFIX + metric
    mlc.log_metric(run_id, key, float(predicted))
    mlc.set_tag(run_id, key, f"{float(predicted):.6g}")
    if formula:
        mlc.set_tag(run_id, key + "/fit", formula)
