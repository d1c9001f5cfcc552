"""A study's arms side by side: the weak-to-strong gain per stage and budget, with its t interval.

``python -m scaling.study`` runs every CLIP stage of a ladder in several arms, each over several
seeds, and tags the runs ``arm`` (``mim_init``: vision tower from the rung's MIM stage, as the
ladder does; ``random_init``: random vision tower at the same CLIP samples; ``random_init_compute``:
random vision tower given the CLIP samples that cost what mim_init's CLIP + MIM cost;
``scratch``: both towers random), ``seed`` (the absolute ``train.seed``), ``budget`` (mim_init's
CLIP samples of the comparison), ``upstream_seed`` (the seed of the teacher and MIM chain the run
starts from; empty for a run that starts from nothing) and ``base_stage``.

The gain is ``mean(mim_init) - mean(control)`` of a final metric. Its interval is a t interval
(:func:`mean_difference_interval`): on the per-seed differences where both arms ran the same seeds
(paired: same seed, same data order and upstream chain), else Welch's. With 3 seeds per arm a
percentile bootstrap covers a nominal 90 % interval 65-75 % of the time; these cover >= 85 %
(tests/unit/test_arm_intervals.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from scaling.analysis.power_law import ArrayLike, FitError
from scaling.analysis.predict import base_stage

ARMS = ("mim_init", "random_init", "random_init_compute", "scratch")
# (arm, control, the question the comparison answers)
COMPARISONS = (
    ("mim_init", "random_init", "sample efficiency: at equal CLIP samples, does the MIM init help?"),
    ("mim_init", "random_init_compute", "compute efficiency: at equal total compute (CLIP + MIM), does it?"),
    ("mim_init", "scratch", "both towers random at equal CLIP samples"),
)
SHARED, RESEEDED = "shared", "reseeded"


def _t_interval(diff: np.ndarray, se: np.ndarray, df: np.ndarray, level: float):
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + level / 2, df) * se
    half = np.where(se == 0, 0.0, half)  # identical values: a zero-width interval, not NaN
    return diff, diff - half, diff + half


def mean_difference_interval(a: ArrayLike, b: ArrayLike, *, level: float = 0.9, paired: bool = False):
    """``(mean(a) - mean(b), low, high)``: the ``level`` t interval of a difference of arm means.

    Unpaired: Welch's t (each arm its own variance, Welch-Satterthwaite degrees of freedom).
    Paired (``a[i]`` and ``b[i]`` share seed, data order and upstream): t on the differences.
    The last axis holds the seeds, so 2-D inputs give one interval per row (arrays out);
    1-D inputs give floats. Raises :class:`FitError` below 2 seeds per arm (or pairs).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = a.shape[-1], b.shape[-1]
    if not 0 < level < 1:
        raise FitError(f"level must be in (0, 1); got {level}")
    if na < 2 or nb < 2:
        raise FitError(f"an interval of a difference needs at least 2 seeds per arm; got {na} and {nb}")
    if paired:
        if a.shape != b.shape:
            raise FitError(f"a paired interval needs one value per seed in both arms; got {na} and {nb}")
        d = a - b
        out = _t_interval(d.mean(-1), d.std(-1, ddof=1) / np.sqrt(na), np.full(d.shape[:-1], na - 1.0), level)
    else:
        va, vb = a.var(-1, ddof=1) / na, b.var(-1, ddof=1) / nb
        se = np.sqrt(va + vb)
        with np.errstate(invalid="ignore", divide="ignore"):
            df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        out = _t_interval(a.mean(-1) - b.mean(-1), se, df, level)
    if np.ndim(out[0]) == 0:
        return tuple(float(v) for v in out)
    return out


def arm_results(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished CLIP runs that carry an ``arm`` tag: ``stage``, ``budget``, ``arm``, ``seed``,
    ``upstream_seed``, ``value``, ``samples``, ``flops``, ``inherited_flops``, ``run_id``."""
    cols = ["stage", "budget", "arm", "seed", "upstream_seed", "value", "samples", "flops", "inherited_flops",
            "run_id"]  # fmt: skip
    col = f"metrics.{metric}"
    if runs.empty or "tags.arm" not in runs or col not in runs:
        return pd.DataFrame(columns=cols)
    done = runs[(runs["status"] == "FINISHED") & runs["tags.arm"].isin(ARMS) & runs[col].notna()]

    def get(r: pd.Series, key: str) -> str:
        v = r.get(key)
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)

    def num(r: pd.Series, key: str) -> float:
        v = pd.to_numeric(r.get(key), errors="coerce")
        return float(v) if v is not None and not pd.isna(v) else np.nan

    rows = [(base_stage(r), get(r, "tags.budget"), r["tags.arm"], get(r, "tags.seed"), get(r, "tags.upstream_seed"),
             float(r[col]), num(r, "metrics.train/samples_seen"), _flops(r, num), num(r, "tags.inherited_flops"),
             r["run_id"]) for _, r in done.iterrows()]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _flops(run: pd.Series, num) -> float:
    """The run's training FLOPs: the frame's cost column, else the logged count (a frame read
    without the cost model)."""
    flops = num(run, "flops")
    return flops if not np.isnan(flops) else num(run, "metrics.train/flops")


def upstream_sets(group: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A stage's runs at one budget split by where their upstream came from: ``shared`` (every
    seed from the ladder's one teacher and MIM chain) and ``reseeded`` (each seed its own chain).
    A run with no upstream (``scratch``) or the ladder's own chain at its own seed is in both; a
    set is returned only if it holds more than that one seed."""
    up, seed = group["upstream_seed"].astype(str), group["seed"].astype(str)
    if (up == "").all():
        return {SHARED: group}
    base = min(up[up != ""], key=lambda s: int(s) if s.lstrip("-").isdigit() else 0)
    own_chain = (up != "") & (up != base) & (up == seed)
    shared_chain = (up == base) & (seed != base)
    out = {}
    if shared_chain.any() or not own_chain.any():
        out[SHARED] = group[(up == base) | (up == "")]
    if own_chain.any():
        out[RESEEDED] = group[(up == seed) | (up == "")]
    return out


def _compare(x: pd.DataFrame, y: pd.DataFrame, level: float) -> tuple[float, float, float, str]:
    """Difference of two arms' means with its interval: paired when they ran the same seeds."""
    xs, ys = x.groupby("seed")["value"].mean(), y.groupby("seed")["value"].mean()
    if len(xs) and len(ys) and len(xs) == len(x) and len(ys) == len(y) and set(xs.index) == set(ys.index):
        ys = ys.loc[xs.index]
        try:
            return (*mean_difference_interval(xs.to_numpy(), ys.to_numpy(), level=level, paired=True),
                    f"paired t, {len(xs)} seeds")
        except FitError:
            pass
    try:
        return (*mean_difference_interval(x["value"].to_numpy(), y["value"].to_numpy(), level=level),
                f"Welch t, {len(x)} vs {len(y)} seeds")
    except FitError:
        diff = x["value"].mean() - y["value"].mean() if len(x) and len(y) else np.nan
        return float(diff), np.nan, np.nan, "none (fewer than 2 seeds in an arm)"


def _budget_key(budget: str) -> float:
    try:
        return float(budget)
    except ValueError:
        return -1.0


def weak_to_strong(runs: pd.DataFrame, metric: str, level: float = 0.9) -> pd.DataFrame:
    """One row per stage, budget and upstream kind: seeds, mean and sd per arm, and per comparison
    ``<a>-<b>`` the difference, ``_low`` / ``_high`` (NaN below 2 seeds per arm) and ``_method``.

    Also: ``samples_<arm>`` (mean CLIP samples seen), ``flops_<arm>`` (mean CLIP training FLOPs),
    ``inherited_<arm>`` (mean FLOPs of the stages the arm's weights come from).
    """
    res = arm_results(runs, metric)
    rows = []
    res = res.assign(_b=res["budget"].map(_budget_key))
    for (stage, budget), group in res.groupby(["stage", "budget"], sort=False):
        for upstream, part in upstream_sets(group).items():
            row: dict = {"stage": stage, "budget": budget, "upstream": upstream}
            for arm in ARMS:
                v = part[part["arm"] == arm]
                row[f"n_{arm}"] = len(v)
                row[f"mean_{arm}"] = float(v["value"].mean()) if len(v) else np.nan
                row[f"sd_{arm}"] = float(v["value"].std(ddof=1)) if len(v) > 1 else np.nan
                row[f"samples_{arm}"] = float(v["samples"].mean()) if len(v) else np.nan
                row[f"flops_{arm}"] = float(v["flops"].mean()) if len(v) else np.nan
                row[f"inherited_{arm}"] = float(v["inherited_flops"].fillna(0.0).mean()) if len(v) else np.nan
            for a, b, _ in COMPARISONS:
                key = f"{a}-{b}"
                row[key], row[f"{key}_low"], row[f"{key}_high"], row[f"{key}_method"] = _compare(
                    part[part["arm"] == a], part[part["arm"] == b], level)
            row["_b"] = float(group["_b"].iloc[0])
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(dict.fromkeys(out["stage"]))}
    out = out.sort_values(["stage", "_b", "upstream"], key=lambda c: c.map(order) if c.name == "stage" else c)
    return out.drop(columns="_b").reset_index(drop=True)


def gains(runs: pd.DataFrame, metric: str, level: float = 0.9) -> pd.DataFrame:
    """The gain of mim_init against each control that ran, long: one row per stage, budget,
    upstream kind and control. For a metric where lower is better (a loss) the sign is turned, so
    a positive gain always means the MIM init helped. Columns: ``stage``, ``budget``, ``upstream``,
    ``metric``, ``control``, ``mim_init``, ``control_mean``, ``gain``, ``low``, ``high``,
    ``method``, ``n_mim_init``, ``n_control``, ``samples`` (mim_init's CLIP samples),
    ``compute`` (mim_init's CLIP FLOPs plus the FLOPs of the stages it starts from)."""
    # higher-is-better metrics by name, as the law's MetricSpec reads them
    sign = 1.0 if any(t in metric.lower() for t in ("top1", "top5", "acc", "recall")) else -1.0
    table = weak_to_strong(runs, metric, level)
    rows = []
    for _, r in table.iterrows():
        for a, b, _ in COMPARISONS:
            if not r[f"n_{b}"] or not r[f"n_{a}"]:
                continue
            k = f"{a}-{b}"
            lo, hi = ((np.nan,) * 2 if pd.isna(r[f"{k}_low"])
                      else sorted((sign * r[f"{k}_low"], sign * r[f"{k}_high"])))
            rows.append({"stage": r["stage"], "budget": r["budget"], "upstream": r["upstream"], "metric": metric,
                         "control": b, "mim_init": r[f"mean_{a}"], "control_mean": r[f"mean_{b}"],
                         "gain": sign * r[k], "low": lo, "high": hi, "method": r[f"{k}_method"],
                         "n_mim_init": int(r[f"n_{a}"]), "n_control": int(r[f"n_{b}"]),
                         "samples": _budget_key(r["budget"]) if r["budget"] else r[f"samples_{a}"],
                         "compute": r[f"flops_{a}"] + r[f"inherited_{a}"]})  # fmt: skip
    cols = ["stage", "budget", "upstream", "metric", "control", "mim_init", "control_mean", "gain", "low", "high",
            "method", "n_mim_init", "n_control", "samples", "compute"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


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


def signed_gain(value: float, spec: str = "+.4g", scale: float = 1.0) -> str:
    """A gain with its sign, as the report and the study's printout show it; two equal arm means
    differ by float rounding (e.g. -9e-18), which reads +0, not -9.252e-18 or -0.0."""
    return format(0.0 if abs(value) < 1e-12 else scale * value, spec)
