"""Scaling-law fits: power laws by Huber loss on log residuals, bootstrap over runs, rollouts.

The recipe is the one the careful ladders use:

* Chinchilla / OLMo-core (``model_ladder/analysis/scaling_laws.py``): minimise the Huber loss of
  the *log* residuals (delta 1e-3, so one odd run cannot drag the law) with L-BFGS-B from a grid
  of initial points, keep the best; uncertainty from refitting bootstrap resamples.
* LAION's reproducible scaling laws (Cherti et al. 2023): fit the compute frontier, the best
  run per log-spaced compute bin (``scaling.analysis.frontier``).
* OLMo's task ladders (Bhagia et al. 2024): a two-step prediction, compute -> loss (power law)
  -> accuracy (a sigmoid of the loss), see :func:`fit_two_step`.

The law and its intervals live in ``scaling.analysis.power_law``, the Huber objective and its
minimisers in ``scaling.analysis.huber_fit``, the interval draws in ``scaling.analysis.fit_draws``.
Resamples draw whole *runs* (``groups``) when given, so the several evaluations of one run count
once. A law needs at least 3 distinct compute points (4 with an offset): through fewer, any
curve fits exactly and its "interval" says nothing, so the fits refuse with :class:`FitError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling.analysis.fit_draws import resample_weights, t_draws
from scaling.analysis.huber_fit import HUBER_DELTA, point_fit, refit_rows
from scaling.analysis.power_law import ArrayLike, FitError, PowerLawFit

MIN_LAW_POINTS = 3
MIN_BOOTSTRAP_GROUPS = 6  # below: a resample of runs has too few distinct runs to mean anything


def _clean(x: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None):
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise FitError(f"x and y differ in length ({len(x)} vs {len(y)})")
    g = np.arange(len(x)) if groups is None else np.asarray(groups).ravel()
    if g.shape != x.shape:
        raise FitError(f"groups and x differ in length ({len(g)} vs {len(x)})")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep], g[keep]


def _need(offset: bool) -> int:
    return MIN_LAW_POINTS + (1 if offset else 0)


def _check_distinct(x: np.ndarray, offset: bool, what: str = "a power-law fit") -> None:
    need, got = _need(offset), len(np.unique(x))
    if got < need:
        form = "y = a·x^b + c" if offset else "y = a·x^b"
        raise FitError(f"{what} ({form}) needs at least {need} points at distinct x > 0 with y > 0; "
                       f"got {got}: through fewer points any curve fits exactly, so there is no law to report")


def refit(fit: PowerLawFit, x: ArrayLike, y: ArrayLike, delta: float = HUBER_DELTA) -> np.ndarray | None:
    """``fit``'s parameters ``(log_a, b, c)`` refitted to other points (a resample), started from
    ``fit``: one start, no interval; None when the points cannot carry the law."""
    x, y, _ = _clean(x, y)
    offset = fit.c is not None
    if len(np.unique(x)) < _need(offset):
        return None
    lx, ly = np.log(x) - math.log(fit.x_ref), np.log(y)
    start = fit.params if offset else fit.params[:2]
    theta = refit_rows(lx, ly, np.ones((1, len(x))), offset, delta, start, np.array([y.min()]))[0]
    if not np.all(np.isfinite(theta)):
        return None
    return theta if offset else np.append(theta, np.nan)


def fit_power_law(
    x: ArrayLike,
    y: ArrayLike,
    *,
    offset: bool = False,
    bootstrap: int = 200,
    seed: int = 0,
    groups: ArrayLike | None = None,
    delta: float = HUBER_DELTA,
) -> PowerLawFit:
    """Fit ``y = a * x^b`` (``offset=True``: ``+ c``, ``0 <= c < min y``) by Huber loss on log residuals.

    The point fit starts from several initial points and keeps the best; each of ``bootstrap``
    resamples (whole ``groups`` when given, e.g. run ids, else single points) refits from it.
    A pairs bootstrap on few groups gives intervals that are too narrow (the resampled fits see
    fewer distinct points than there are parameters to spare), so the resampled parameters'
    spread around the point fit is widened by ``sqrt(G / (G - k))`` for ``G`` groups and ``k``
    parameters (the residual-variance correction of Davison & Hinkley 1997, 6.2.3). With fewer
    than 6 runs, draws come from the fit's t sampling distribution instead (see
    :func:`scaling.analysis.fit_draws.t_draws`).
    Raises :class:`FitError` when fewer than 3 (4 with an offset) distinct x > 0 remain.
    """
    x, y, g = _clean(x, y, groups)
    _check_distinct(x, offset)
    x_ref = 10.0 ** round(float(np.mean(np.log10(x))))
    params, loss = point_fit(x, y, x_ref, offset, delta)
    full = params if offset else np.append(params, np.nan)
    lx, ly = np.log(x) - math.log(x_ref), np.log(y)
    pred = np.log(np.maximum(np.exp(full[0] + full[1] * lx) + np.nan_to_num(full[2]), 1e-300))
    ss_res, ss_tot = float(np.sum((ly - pred) ** 2)), float(np.sum((ly - ly.mean()) ** 2))
    boot, failed, how = np.empty((0, 3)), 0, "none"
    n_groups, k = len(np.unique(g)), len(params)
    rng = np.random.default_rng(seed)
    if bootstrap > 0 and n_groups < MIN_BOOTSTRAP_GROUPS and len(x) > k:
        # Resampling 3-5 runs mostly repeats the same runs (the usable resamples of 3 runs are all
        # the original fit): the interval would have no width. The t-distribution is honest here.
        theta, how = t_draws(lx, ly, params, offset, bootstrap, rng), f"t over {n_groups} runs"
    elif bootstrap > 0:
        w = resample_weights(g, bootstrap, rng)
        distinct = np.array([len(np.unique(x[row > 0])) for row in w])
        usable = distinct >= _need(offset)
        failed = int((~usable).sum())
        w = w[usable]
        y_min = np.array([y[row > 0].min() for row in w])
        theta = refit_rows(lx, ly, w, offset, delta, params, y_min) if len(w) else np.empty((0, k))
        keep = np.all(np.isfinite(theta), axis=1)
        failed += int((~keep).sum())
        theta = theta[keep]
        inflate = math.sqrt(n_groups / (n_groups - k)) if n_groups > k else 1.0
        theta = params + inflate * (theta - params)
        how = f"bootstrap over {n_groups} runs"
    else:
        theta = np.empty((0, k))
    if len(theta):
        if offset:  # the floor stays a floor: in [0, min y)
            theta[:, 2] = np.clip(theta[:, 2], 0.0, y.min() * (1 - 1e-9))
        boot = theta if offset else np.column_stack([theta, np.full(len(theta), np.nan)])
    return PowerLawFit(
        log_a=float(full[0]), b=float(full[1]), x_ref=x_ref, c=float(full[2]) if offset else None,
        n=len(x), n_x=len(np.unique(x)), r2=1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), loss=loss,
        boot=boot, boot_failed=failed, interval=how,
    )


# -- held-out rungs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutStep:
    """One held-out rung: fitted on the rungs with less compute, predicted at this one."""

    key: str
    x: float
    actual: float
    predicted: float
    low: float
    high: float
    n_fit_x: int

    @property
    def rel_error(self) -> float:
        return (self.predicted - self.actual) / self.actual if self.actual else float("nan")


def rollout(x: ArrayLike, y: ArrayLike, keys: ArrayLike, *, groups: ArrayLike | None = None,
            level: float = 0.9, **fit_kw) -> tuple[list[RolloutStep], list[str]]:
    """For each rung (``keys``, ordered by compute): fit on the rungs below, predict this one.

    ``actual`` is the mean of the rung's ``y`` at its mean log-compute. Returns the steps that
    could be predicted and one line per rung that could not (too few points below it).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keys = np.asarray(keys).astype(str)
    g = np.asarray(groups) if groups is not None else np.arange(len(x))
    order = sorted(set(keys), key=lambda k: float(np.max(x[keys == k])))
    steps, skipped = [], []
    for i, key in enumerate(order):
        below = np.isin(keys, order[:i])
        at = keys == key
        xk, yk = float(np.exp(np.mean(np.log(x[at])))), float(np.mean(y[at]))
        try:
            fit = fit_power_law(x[below], y[below], groups=g[below], **fit_kw)
        except FitError as exc:
            if i:
                skipped.append(f"{key}: {exc}")
            continue
        lo, hi = fit.band(xk, level)
        steps.append(RolloutStep(key, xk, yk, float(fit.predict(xk)), float(lo[0]), float(hi[0]), fit.n_x))
    return steps, skipped
