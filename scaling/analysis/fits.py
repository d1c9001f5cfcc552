"""Scaling-law fits: power laws by Huber loss on log residuals, bootstrap over runs, rollouts.

The recipe is the one the careful ladders use:

* Chinchilla / OLMo-core (``model_ladder/analysis/scaling_laws.py``): minimise the Huber loss of
  the *log* residuals (delta 1e-3, so one odd run cannot drag the law) with L-BFGS-B from a grid
  of initial points, keep the best; uncertainty from refitting bootstrap resamples.
* LAION's reproducible scaling laws (Cherti et al. 2023): fit the compute frontier, the best
  run per log-spaced compute bin (``scaling.analysis.frontier``).
* OLMo's task ladders (Bhagia et al. 2024): a two-step prediction, compute -> loss (power law)
  -> accuracy (a sigmoid of the loss), see :func:`fit_two_step`.

Resamples draw whole *runs* (``groups``) when given, so the several evaluations of one run count
once. A law needs at least 3 distinct compute points (4 with an offset): through fewer, any
curve fits exactly and its "interval" says nothing, so the fits refuse with :class:`FitError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

ArrayLike = Sequence[float] | np.ndarray
HUBER_DELTA = 1e-3  # Chinchilla's and OLMo's choice, on log residuals
MIN_LAW_POINTS = 3
MIN_BOOTSTRAP_GROUPS = 6  # below: a resample of runs has too few distinct runs to mean anything


class FitError(ValueError):
    """Too few or unusable points for a fit; the message says how many are needed."""


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def quantile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PowerLawFit:
    """``y = a * x**b (+ c)``, fitted on ``n`` points at ``n_x`` distinct x.

    ``a`` is kept as ``exp(log_a)`` at the reference scale ``x_ref`` (a power of ten near the data)
    so that fits of FLOP counts (~1e20) stay well conditioned. ``boot`` holds one parameter row
    ``(log_a, b, c)`` per successful bootstrap refit; ``boot_failed`` counts the resamples that
    had too few distinct x to refit.
    """

    log_a: float
    b: float
    x_ref: float
    c: float | None = None
    n: int = 0
    n_x: int = 0
    r2: float = float("nan")
    loss: float = float("nan")  # the Huber objective at the optimum
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 3)), repr=False, compare=False)
    boot_failed: int = 0
    interval: str = "none"  # how ``boot`` was drawn: "bootstrap over N runs" | "t over N runs" | "none"

    @property
    def a(self) -> float:
        """The prefactor in the original units of ``x``."""
        return math.exp(self.log_a - self.b * math.log(self.x_ref))

    @property
    def params(self) -> np.ndarray:
        return np.array([self.log_a, self.b, np.nan if self.c is None else self.c])

    def _eval(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        log_a, b, c = params[..., 0:1], params[..., 1:2], params[..., 2:3]
        y = np.exp(log_a + b * (np.log(x) - math.log(self.x_ref)))
        return y + np.nan_to_num(c)

    def predict(self, x: ArrayLike | float) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self._eval(self.params, np.atleast_1d(x)).reshape(x.shape)

    def band(self, x: ArrayLike | float, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise ``level`` bootstrap interval of the prediction (the point fit if no resamples)."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        if len(self.boot) < 2:
            y = self.predict(x)
            return y, y
        curves = np.stack([self._eval(p, x) for p in self.boot])
        lo, hi = np.nanquantile(curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi

    def exponent_interval(self, level: float = 0.9) -> tuple[float, float]:
        if len(self.boot) < 2:
            return self.b, self.b
        return quantile_interval(self.boot[:, 1], level)

    def intervals(self, level: float = 0.9) -> dict[str, tuple[float, float]]:
        """Bootstrap intervals of ``a`` (original units), ``b`` and (with an offset) ``c``."""
        if len(self.boot) < 2:
            a_ref = math.exp(self.log_a)
            out = {"a": (self.a, self.a), "b": (self.b, self.b), "a_ref": (a_ref, a_ref)}
            return out | ({"c": (self.c, self.c)} if self.c is not None else {})
        a = np.exp(self.boot[:, 0] - self.boot[:, 1] * math.log(self.x_ref))
        out = {"a": quantile_interval(a, level), "b": quantile_interval(self.boot[:, 1], level),
               "a_ref": quantile_interval(np.exp(self.boot[:, 0]), level)}
        return out | ({"c": quantile_interval(self.boot[:, 2], level)} if self.c is not None else {})

    def formula(self, y: str = "y", x: str = "C", x_unit: str = "") -> str:
        """E.g. ``err = 0.31 · (C / 1e15 FLOPs)^-0.052`` (reference scale kept for readability)."""
        exp10 = round(math.log10(self.x_ref))
        unit = f" {x_unit}" if x_unit else ""
        scale = f"({x} / 1e{exp10}{unit})" if exp10 else x
        text = f"{y} = {math.exp(self.log_a):.3g} · {scale}^{self.b:+.3g}"
        if self.c is not None:
            text += f" {'+' if self.c >= 0 else '-'} {abs(self.c):.3g}"
        return text


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


def _objective(theta: np.ndarray, lx: np.ndarray, ly: np.ndarray, w: np.ndarray, offset: bool,
               delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of log residuals (scaled by 1/delta) and its analytic gradient.

    ``theta`` holds one parameter row per fit, ``w`` (fits x points) how often each point counts
    in each fit: all bootstrap refits are one separable problem, solved in a single call.
    """
    k = 3 if offset else 2
    t = theta.reshape(-1, k)
    core = np.exp(np.clip(t[:, :1] + t[:, 1:2] * lx, -700, 700))
    pred = np.maximum(core + (t[:, 2:3] if offset else 0.0), 1e-300)
    r = ly - np.log(pred)
    psi = w * np.clip(r, -delta, delta) / delta  # d huber / d r, per point and fit
    share = core / pred
    grad = [-np.sum(psi * share, axis=1), -np.sum(psi * share * lx, axis=1)]
    if offset:
        grad.append(-np.sum(psi / pred, axis=1))
    return float(np.sum(w * huber(r, delta)) / delta), np.stack(grad, axis=1).ravel()


def _starts(lx: np.ndarray, ly: np.ndarray, y: np.ndarray, offset: bool) -> list[np.ndarray]:
    """Initial points: the least-squares line, then a grid of exponents (and floors)."""
    slope, icpt = np.polyfit(lx, ly, 1)
    starts = [np.array([icpt, slope])]
    floors = [0.0] if not offset else [0.0, 0.3 * y.min(), 0.6 * y.min(), 0.9 * y.min()]
    out = []
    for c in floors:
        lyc = np.log(np.clip(y - c, 1e-300, None))
        for b in (slope, -1.0, -0.3, -0.1, -0.03, 0.03, 0.1, 0.3):
            out.append(np.array([float(np.mean(lyc - b * lx)), b] + ([c] if offset else [])))
    return (starts if not offset else []) + out


def _minimise(lx: np.ndarray, ly: np.ndarray, w: np.ndarray, offset: bool, delta: float,
              x0: np.ndarray, y_min: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """L-BFGS-B on all rows of ``x0`` at once; returns (parameters per row, loss per row)."""
    rows = len(x0)
    bounds = []
    for i in range(rows):
        bounds += [(None, None), (-10.0, 10.0)] + ([(0.0, float(y_min[i]) * (1 - 1e-9))] if offset else [])
    try:
        res = minimize(_objective, x0.ravel(), args=(lx, ly, w, offset, delta), jac=True, method="L-BFGS-B",
                       bounds=bounds, options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    except (ValueError, FloatingPointError):
        return None
    theta = res.x.reshape(rows, -1)
    if not np.all(np.isfinite(theta)):
        return None
    t = theta
    pred = np.maximum(np.exp(t[:, :1] + t[:, 1:2] * lx) + (t[:, 2:3] if offset else 0.0), 1e-300)
    return theta, np.sum(w * huber(ly - np.log(pred), delta), axis=1)


def _irls_line(lx: np.ndarray, ly: np.ndarray, w: np.ndarray, x0: np.ndarray, delta: float,
               iters: int = 300) -> np.ndarray:
    """Huber regression of ``ly`` on ``lx`` for every row of ``w`` at once (iteratively reweighted
    least squares; the problem is convex, so this reaches the same minimum as any optimiser,
    without the optimiser's per-call overhead that 100+ bootstrap refits would pay)."""
    theta = x0.copy()
    for _ in range(iters):
        r = ly - (theta[:, :1] + theta[:, 1:2] * lx)
        om = w * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-12))
        s0, s1, s2 = om.sum(1), (om * lx).sum(1), (om * lx * lx).sum(1)
        t0, t1 = (om * ly).sum(1), (om * lx * ly).sum(1)
        det = s0 * s2 - s1 * s1
        ok = det > 0
        new = theta.copy()
        new[ok, 1] = (s0[ok] * t1[ok] - s1[ok] * t0[ok]) / det[ok]
        new[ok, 0] = (t0[ok] - new[ok, 1] * s1[ok]) / s0[ok]
        step = np.max(np.abs(new - theta))
        theta = new
        if step < 1e-12:
            break
    return theta


def _refit(lx: np.ndarray, ly: np.ndarray, w: np.ndarray, offset: bool, delta: float, x0: np.ndarray,
           y_min: np.ndarray) -> np.ndarray:
    """One parameter row per row of ``w``, each started from ``x0``."""
    if not offset:
        return _irls_line(lx, ly, w, np.tile(x0, (len(w), 1)), delta)
    rows = []
    for i, row in enumerate(w):
        found = _minimise(lx, ly, row[None], offset, delta, x0[None], y_min[i:i + 1])
        rows.append(found[0][0] if found is not None else np.full(len(x0), np.nan))
    return np.array(rows)


def _point_fit(x: np.ndarray, y: np.ndarray, x_ref: float, offset: bool, delta: float) -> tuple[np.ndarray, float]:
    """The best of the fits from every initial point of :func:`_starts`."""
    lx, ly = np.log(x) - math.log(x_ref), np.log(y)
    starts = np.array(_starts(lx, ly, y, offset))
    w = np.ones((len(starts), len(x)))
    found = _minimise(lx, ly, w, offset, delta, starts, np.full(len(starts), y.min()))
    if found is None:
        raise FitError("the power-law fit did not converge from any initial point")
    theta, loss = found
    best = theta[int(np.argmin(loss))]
    if not offset:  # polish: L-BFGS-B stops early on the nearly piecewise-linear objective
        best = _irls_line(lx, ly, np.ones((1, len(x))), best[None], delta)[0]
    r = ly - np.log(np.maximum(np.exp(best[0] + best[1] * lx) + (best[2] if offset else 0.0), 1e-300))
    return best, float(np.sum(huber(r, delta)))


def bootstrap_indices(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one resample that draws whole groups (runs) with replacement."""
    keys = np.unique(groups)
    drawn = rng.choice(keys, size=len(keys), replace=True)
    return np.concatenate([np.flatnonzero(groups == k) for k in drawn])


def _resample_weights(groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n x points) multiplicities: how often each point enters each group resample."""
    keys, inverse = np.unique(groups, return_inverse=True)
    draws = rng.integers(0, len(keys), (n, len(keys)))
    counts = np.stack([np.bincount(d, minlength=len(keys)) for d in draws]) if n else np.empty((0, len(keys)))
    return counts[:, inverse].astype(float)


def refit(fit: PowerLawFit, x: ArrayLike, y: ArrayLike, delta: float = HUBER_DELTA) -> np.ndarray | None:
    """``fit``'s parameters ``(log_a, b, c)`` refitted to other points (a resample), started from
    ``fit``: one start, no interval; None when the points cannot carry the law."""
    x, y, _ = _clean(x, y)
    offset = fit.c is not None
    if len(np.unique(x)) < _need(offset):
        return None
    lx, ly = np.log(x) - math.log(fit.x_ref), np.log(y)
    start = fit.params if offset else fit.params[:2]
    theta = _refit(lx, ly, np.ones((1, len(x))), offset, delta, start, np.array([y.min()]))[0]
    if not np.all(np.isfinite(theta)):
        return None
    return theta if offset else np.append(theta, np.nan)


def _t_draws(lx: np.ndarray, ly: np.ndarray, params: np.ndarray, offset: bool, n: int,
             rng: np.random.Generator) -> np.ndarray:
    """Parameter draws from the fit's multivariate-t sampling distribution: covariance
    ``s² (JᵀJ)⁻¹`` from the log residuals (``s²`` on ``n - k`` degrees of freedom), ``J`` the
    Jacobian of the log curve. Used where too few runs exist for a bootstrap over runs."""
    k = len(params)
    core = np.exp(params[0] + params[1] * lx)
    pred = core + (params[2] if offset else 0.0)
    share = core / pred
    cols = [share, share * lx] + ([1.0 / pred] if offset else [])
    jac = np.stack(cols, axis=1)
    dof = len(lx) - k
    s2 = float(np.sum((ly - np.log(pred)) ** 2)) / dof
    try:
        cov = s2 * np.linalg.inv(jac.T @ jac)
        chol = np.linalg.cholesky(cov + 1e-18 * np.eye(k))
    except np.linalg.LinAlgError:
        return np.empty((0, k))
    z = rng.standard_normal((n, k)) @ chol.T
    scale = np.sqrt(dof / rng.chisquare(dof, (n, 1)))
    return params + z * scale


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
    than 6 runs, draws come from the fit's t sampling distribution instead (see :func:`_t_draws`).
    Raises :class:`FitError` when fewer than 3 (4 with an offset) distinct x > 0 remain.
    """
    x, y, g = _clean(x, y, groups)
    _check_distinct(x, offset)
    x_ref = 10.0 ** round(float(np.mean(np.log10(x))))
    params, loss = _point_fit(x, y, x_ref, offset, delta)
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
        theta, how = _t_draws(lx, ly, params, offset, bootstrap, rng), f"t over {n_groups} runs"
    elif bootstrap > 0:
        w = _resample_weights(g, bootstrap, rng)
        distinct = np.array([len(np.unique(x[row > 0])) for row in w])
        usable = distinct >= _need(offset)
        failed = int((~usable).sum())
        w = w[usable]
        y_min = np.array([y[row > 0].min() for row in w])
        theta = _refit(lx, ly, w, offset, delta, params, y_min) if len(w) else np.empty((0, k))
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
