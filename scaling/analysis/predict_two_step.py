"""OLMo's two-step prediction on the ladder's points: compute -> loss (a power law over stages)
-> accuracy (a sigmoid over every evaluation), its held-out-stage rollout, and the losses it reads."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.analysis import load
from scaling.analysis.power_law import FitError
from scaling.analysis.predict import MetricSpec, ladder_points, law_points
from scaling.analysis.two_step import TwoStepFit, fit_two_step


def with_loss(uri: str | None, points: pd.DataFrame, loss_key: str = "train/loss",
              window: int = 5) -> pd.DataFrame:
    """``points`` plus ``loss``: the mean of the last ``window`` logged ``loss_key`` values up to
    each evaluation's step (a training loss is noisy from batch to batch)."""
    out = points.copy()
    out["loss"] = np.nan
    for run_id, group in points.groupby("run_id"):
        hist = load.metric_history(uri, run_id, loss_key)
        if hist.empty:
            continue
        steps, values = hist["step"].to_numpy(), hist["value"].to_numpy(float)
        for i, step in zip(group.index, group["step"], strict=True):
            upto = values[steps <= step] if step >= 0 else values
            if len(upto):
                out.loc[i, "loss"] = float(np.mean(upto[-window:]))
    return out


def _accuracy(spec: MetricSpec, values) -> np.ndarray:
    return np.asarray(values, dtype=float) / (100.0 if spec.percent else 1.0)


def fit_two_step_points(points: pd.DataFrame, spec: MetricSpec, bootstrap: int = 100) -> TwoStepFit:
    """OLMo's two-step law on :func:`with_loss` points: stage compute -> stage loss (final, seed
    mean) by a power law, then loss -> accuracy by a sigmoid fitted on every evaluation."""
    if not spec.higher_is_better:
        raise FitError(f"the two-step fit predicts an accuracy; '{spec.key}' is not one")
    pts = points.dropna(subset=["loss"])
    pts = ladder_points(pts)
    finals = pts[pts["final"]]
    law = finals.groupby("stage").agg(flops=("flops", lambda v: float(np.exp(np.mean(np.log(v))))),
                                      loss=("loss", "mean"))  # fmt: skip
    return fit_two_step(law["flops"], law["loss"], np.zeros(len(law)), groups=law.index.to_numpy(),
                        link_points=(pts["loss"], _accuracy(spec, pts["value"]), pts["stage"]),
                        bootstrap=bootstrap)  # fmt: skip


def two_step_rollout(points: pd.DataFrame, spec: MetricSpec, bootstrap: int = 100) -> pd.DataFrame:
    """Like :func:`predicted_vs_achieved`, with the two-step law (accuracy in the metric's units)."""
    law = law_points(points)
    scale = 100.0 if spec.percent else 1.0
    rows = []
    for _, row in law.iterrows():
        prior = points[points["stage"].isin(law[law["flops"] < row["flops"]]["stage"])]
        pred = low = high = rel = np.nan
        try:
            two = fit_two_step_points(prior, spec, bootstrap=bootstrap)
            pred = float(np.ravel(two.predict(row["flops"]))[0]) * scale
            lo, hi = two.band(row["flops"])
            low, high = float(lo[0]) * scale, float(hi[0]) * scale
            rel = (pred - row["value"]) / row["value"] if row["value"] else np.nan
        except FitError:
            pass
        rows.append(dict(label=row["stage"], flops=row["flops"], predicted=pred, low=low, high=high,
                         achieved=row["value"], rel_error=rel))  # fmt: skip
    return pd.DataFrame(rows, columns=["label", "flops", "predicted", "low", "high", "achieved", "rel_error"])
