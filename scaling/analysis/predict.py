"""Metric-vs-compute points, the law across stages, held-out-stage rollouts and predictions.

Accuracies are fitted as error rates (``1 - top1``, or ``100 - top1`` for percentages), which fall
as a power law of compute; losses are fitted as they are. Every evaluation of every run is a point
at the compute spent up to it (drawn as training curves); the *law* is fitted on one point per
stage: the final evaluation, averaged over the stage's seeds, at the stage's training compute.
A stage is ``clip@18B`` whatever its seed; a study's control arms (tag ``arm`` other than
``mim_init``) are left out of the law, and so are its mim_init runs at budgets other than the
ladder stage's own (tag ``budget``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling import costs
from scaling.analysis import load
from scaling.analysis.fits import fit_power_law
from scaling.analysis.frontier import binned_frontier
from scaling.analysis.power_law import FitError, PowerLawFit
from scaling.models.registry import LADDER_ORDER, get_rung

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


# The ladder's own MIM-initialised stages; a study's controls are compared, not fitted, and a proxy
# ladder's bootstrap teacher (arm "bootstrap", a CLIP from scratch) is another recipe.
LAW_ARMS = ("", "mim_init")


def base_stage(run: pd.Series) -> str:
    """The stage a run belongs to (``clip@18B``), also for a study's seeds and control arms."""
    base = run.get("tags.base_stage")
    if isinstance(base, str) and base:
        return base
    return str(run.get("label") or run.get("run_name") or run["run_id"][:8])


COMPUTE_AXES = {"own": "the stage's own training FLOPs",
                 "inherited": "the stage's own training FLOPs plus those of every stage whose weights it starts "
                              "from (teacher, MIM stage, lower rungs; tag inherited_flops)"}


def compute_points(uri: str | None, runs: pd.DataFrame, metric: str, compute: str = "own") -> pd.DataFrame:
    """One row per evaluation of ``metric``: ``run_id``, ``label``, ``stage``, ``arm``, ``budget``,
    ``flops``, ``value``, ``final``, ``step``. ``compute`` (``COMPUTE_AXES``): ``inherited`` adds
    the run's ``inherited_flops`` tag to every point (runs without it are left out)."""
    if compute not in COMPUTE_AXES:
        raise ValueError(f"compute axis {compute!r}: choose one of {', '.join(COMPUTE_AXES)}")
    rows = []
    col = f"metrics.{metric}"
    for _, run in runs.iterrows():
        flops, final_value = run.get("flops"), run.get(col)
        if flops is None or pd.isna(flops) or final_value is None or pd.isna(final_value):
            continue
        offset = 0.0
        if compute == "inherited":
            offset = pd.to_numeric(run.get("tags.inherited_flops"), errors="coerce")
            if offset is None or pd.isna(offset):
                continue
        label = run.get("label") or run.get("run_name") or run["run_id"][:8]
        arm, budget = run.get("tags.arm"), run.get("tags.budget")
        head = (run["run_id"], label, base_stage(run), arm if isinstance(arm, str) else "",
                budget if isinstance(budget, str) else "")
        hist = load.metric_history(uri, run["run_id"], metric)
        samples = load.metric_history(uri, run["run_id"], "train/samples_seen")
        total = run.get("metrics.train/samples_seen")
        if hist.empty or samples.empty or total is None or pd.isna(total) or float(total) <= 0:
            rows.append((*head, float(flops) + offset, float(final_value), True, -1))
            continue
        per_sample = float(flops) / float(total)
        seen = np.interp(hist["step"], samples["step"], samples["value"])
        for i, (s, v, step) in enumerate(zip(seen, hist["value"], hist["step"], strict=True)):
            if s > 0:
                rows.append((*head, per_sample * s + offset, float(v), i == len(hist) - 1, int(step)))
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


POINT_COLUMNS = ["run_id", "label", "stage", "arm", "budget", "flops", "value", "final", "step"]


def _ladder_budget(group: pd.DataFrame) -> pd.DataFrame:
    """A stage's runs at the ladder stage's own budget (a study also runs mim_init at others)."""
    if "budget" not in group:
        return group
    own = group.loc[group["label"] == group["stage"], "budget"]
    return group[group["budget"] == own.iloc[0]] if len(own) else group


def ladder_points(points: pd.DataFrame) -> pd.DataFrame:
    """The points of the law's runs: the ladder's arm (not a study's controls or the bootstrap
    teacher), at each stage's own budget."""
    if points.empty:
        return points
    law = points[points["arm"].fillna("").isin(LAW_ARMS)]
    return pd.concat([_ladder_budget(g) for _, g in law.groupby("stage", sort=False)]) if not law.empty else law


def law_points(points: pd.DataFrame) -> pd.DataFrame:
    """One row per stage of the law: final value averaged over seeds (``sd``: their standard
    deviation, NaN for one seed), geometric-mean compute."""
    cols = ["stage", "flops", "value", "sd", "n_runs", "run_id"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    finals = ladder_points(points[points["final"]])
    rows = []
    for stage, g in finals.groupby("stage", sort=False):
        rows.append((stage, float(np.exp(np.mean(np.log(g["flops"])))), float(g["value"].mean()),
                     float(g["value"].std(ddof=1)) if len(g) > 1 else np.nan, len(g), g["run_id"].iloc[0]))
    return pd.DataFrame(rows, columns=cols).sort_values("flops").reset_index(drop=True)


def fit_frontier(
    points: pd.DataFrame, spec: MetricSpec, bins_per_decade: int = 4, bootstrap: int = 200
) -> tuple[PowerLawFit, pd.DataFrame]:
    """Power law through the binned compute-Pareto frontier of the stages; returns (fit, frontier).

    Resamples draw whole stages. Raises :class:`FitError` below 3 stages at distinct compute.
    """
    law = law_points(points)
    if law.empty:
        raise FitError("no finished stage has both compute and the metric")
    err = spec.to_fit(law["value"])
    idx = binned_frontier(law["flops"].to_numpy(float), err, bins_per_decade, minimize=True)
    front = law.iloc[idx]
    fit = fit_power_law(front["flops"], spec.to_fit(front["value"]), bootstrap=bootstrap,
                        groups=front["stage"].to_numpy())  # fmt: skip
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


COLUMNS = ["run_id", "label", "flops", "predicted", "low", "high", "achieved", "rel_error", "n_fit", "formula",
           "sd", "n_runs", "same_as_below", "last_two", "monotone"]


def naive_predictions(law: pd.DataFrame, spec: MetricSpec) -> pd.DataFrame:
    """What a reviewer would guess without a law, per stage of ``law`` (ordered by compute):
    ``same_as_below`` (the stage with the next less compute) and ``last_two`` (the straight line in
    log metric-as-fitted vs log compute through the two stages below, extended), and ``monotone``
    (False where the stage is worse than the one below it despite more compute)."""
    law = law.sort_values("flops").reset_index(drop=True)
    y, x = np.log(np.clip(spec.to_fit(law["value"]), 1e-12, None)), np.log(law["flops"].to_numpy(float))
    below = [np.nan, *law["value"][:-1]][: len(law)]
    two = [np.nan, np.nan][: len(law)]
    for i in range(2, len(law)):
        slope = (y[i - 1] - y[i - 2]) / (x[i - 1] - x[i - 2]) if x[i - 1] != x[i - 2] else 0.0
        two.append(float(spec.from_fit(np.exp(y[i - 1] + slope * (x[i] - x[i - 1])))))
    monotone = [True, *(bool(y[i] < y[i - 1]) for i in range(1, len(law)))][: len(law)]
    return pd.DataFrame({"stage": law["stage"], "same_as_below": below, "last_two": two, "monotone": monotone})


def predicted_vs_achieved(points: pd.DataFrame, runs: pd.DataFrame | None, spec: MetricSpec) -> pd.DataFrame:
    """The held-out-stage rollout: each stage's metric predicted by the law fitted on the stages
    with less compute (only those), next to what it achieved and to the naive predictions
    (:func:`naive_predictions`).

    Columns: ``run_id`` (the stage's first run), ``label`` (the stage), ``flops``, ``predicted``,
    ``low``, ``high`` (90 % band), ``achieved``, ``rel_error`` ((predicted - achieved) / achieved,
    in the metric's own units), ``n_fit``, ``formula``, ``sd`` / ``n_runs`` (over seeds),
    ``same_as_below``, ``last_two``, ``monotone``; ``predicted`` is NaN below 3 smaller stages.
    """
    law = law_points(points)
    naive = naive_predictions(law, spec).set_index("stage") if not law.empty else pd.DataFrame()
    rows = []
    for _, row in law.iterrows():
        smaller = law[law["flops"] < row["flops"]]["stage"]
        prior = points[points["stage"].isin(smaller)]
        pred = low = high = rel = np.nan
        n_fit, formula = 0, ""
        try:
            fit, front = fit_frontier(prior, spec)
            lo, hi = fit.band(row["flops"])
            pred = float(spec.from_fit(fit.predict(row["flops"])))
            a, b = spec.from_fit(lo)[0], spec.from_fit(hi)[0]
            low, high = float(min(a, b)), float(max(a, b))
            rel = (pred - row["value"]) / row["value"] if row["value"] else np.nan
            n_fit, formula = len(front), fit.formula("err" if spec.higher_is_better else "y")
        except FitError:
            pass
        rows.append(dict(run_id=row["run_id"], label=row["stage"], flops=row["flops"], predicted=pred, low=low,
                         high=high, achieved=row["value"], rel_error=rel, n_fit=n_fit, formula=formula,
                         sd=row["sd"], n_runs=row["n_runs"], **naive.loc[row["stage"]].to_dict()))  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


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
