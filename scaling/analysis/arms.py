"""A study's arms side by side: the weak-to-strong gain per stage with its bootstrap interval.

``python -m scaling.study`` runs every CLIP stage of a ladder in three arms, each over several
seeds, and tags the runs ``arm`` (``mim_init``: vision tower from the rung's MIM stage, as the
ladder does; ``random_init``: random vision tower, text tower as the ladder's; ``scratch``: both
towers random), ``seed`` and ``base_stage``. The gain of a stage is
``mean(mim_init) - mean(random_init)`` of its final metric; its interval resamples each arm's
seeds (so it holds the seed-to-seed spread, for the stage's one MIM checkpoint).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.analysis.fits import ArrayLike, FitError, quantile_interval
from scaling.analysis.predict import base_stage

ARMS = ("mim_init", "random_init", "scratch")
COMPARISONS = (("mim_init", "random_init"), ("mim_init", "scratch"))


def bootstrap_mean_difference(a: ArrayLike, b: ArrayLike, *, n: int = 2000, level: float = 0.9,
                              seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its ``level`` percentile interval, resampling each arm's seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise FitError(f"an interval of a difference needs at least 2 seeds per arm; got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diffs = (rng.choice(a, (n, len(a))).mean(1) - rng.choice(b, (n, len(b))).mean(1))
    lo, hi = quantile_interval(diffs, level)
    return float(a.mean() - b.mean()), lo, hi


def arm_results(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished CLIP runs that carry an ``arm`` tag: ``stage``, ``arm``, ``seed``, ``value``, ``run_id``."""
    cols = ["stage", "arm", "seed", "value", "run_id"]
    col = f"metrics.{metric}"
    if runs.empty or "tags.arm" not in runs or col not in runs:
        return pd.DataFrame(columns=cols)
    done = runs[(runs["status"] == "FINISHED") & runs["tags.arm"].isin(ARMS) & runs[col].notna()]
    rows = [(base_stage(r), r["tags.arm"], str(r.get("tags.seed", "")), float(r[col]), r["run_id"])
            for _, r in done.iterrows()]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def weak_to_strong(runs: pd.DataFrame, metric: str, level: float = 0.9, resamples: int = 4000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per stage: seeds and mean per arm, and each comparison's difference and interval.

    Columns: ``stage``, ``n_<arm>``, ``mean_<arm>``, ``sd_<arm>`` per arm, and for each
    comparison ``<a>-<b>`` with ``<a>-<b>_low`` / ``_high`` (NaN with fewer than 2 seeds per arm).
    """
    res = arm_results(runs, metric)
    rows = []
    for stage, group in res.groupby("stage", sort=False):
        row: dict = {"stage": stage}
        values = {arm: group[group["arm"] == arm]["value"].to_numpy(float) for arm in ARMS}
        for arm, v in values.items():
            row[f"n_{arm}"] = len(v)
            row[f"mean_{arm}"] = float(v.mean()) if len(v) else np.nan
            row[f"sd_{arm}"] = float(v.std(ddof=1)) if len(v) > 1 else np.nan
        for a, b in COMPARISONS:
            key = f"{a}-{b}"
            try:
                row[key], row[f"{key}_low"], row[f"{key}_high"] = bootstrap_mean_difference(
                    values[a], values[b], n=resamples, level=level, seed=seed)
            except FitError:
                diff = values[a].mean() - values[b].mean() if len(values[a]) and len(values[b]) else np.nan
                row[key], row[f"{key}_low"], row[f"{key}_high"] = float(diff), np.nan, np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(row: pd.Series, key: str = "mim_init-random_init") -> str:
    """Plain words for one stage's interval: above 0, below 0, or not resolved."""
    lo, hi = row.get(f"{key}_low"), row.get(f"{key}_high")
    if lo is None or pd.isna(lo):
        return "no interval (fewer than 2 seeds in an arm)"
    if lo > 0:
        return "gain: interval above 0"
    if hi < 0:
        return "loss: interval below 0"
    return "not resolved: interval contains 0"
