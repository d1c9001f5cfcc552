"""The Huber fit of a power law on log residuals: the objective with its gradient, the initial
points, L-BFGS-B for the point fit (and fits with an offset), and a vectorised IRLS for the
straight line in log-log that all bootstrap refits solve at once."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

from scaling.analysis.power_law import FitError

HUBER_DELTA = 1e-3  # Chinchilla's and OLMo's choice, on log residuals


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


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


def refit_rows(lx: np.ndarray, ly: np.ndarray, w: np.ndarray, offset: bool, delta: float, x0: np.ndarray,
               y_min: np.ndarray) -> np.ndarray:
    """One parameter row per row of ``w``, each started from ``x0``."""
    if not offset:
        return _irls_line(lx, ly, w, np.tile(x0, (len(w), 1)), delta)
    rows = []
    for i, row in enumerate(w):
        found = _minimise(lx, ly, row[None], offset, delta, x0[None], y_min[i:i + 1])
        rows.append(found[0][0] if found is not None else np.full(len(x0), np.nan))
    return np.array(rows)


def point_fit(x: np.ndarray, y: np.ndarray, x_ref: float, offset: bool, delta: float) -> tuple[np.ndarray, float]:
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
