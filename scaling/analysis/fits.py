"""Scaling-law fits: power laws, the compute-Pareto frontier, log binning, bootstrap bands.

Following LAION's reproducible scaling laws (Cherti et al. 2023): keep, per log-spaced compute bin,
the best run, keep the Pareto frontier of those, and fit ``y = a * x^b`` (optionally ``+ c``) by
least squares in log-log space. Uncertainty comes from refitting bootstrap resamples of the points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


class FitError(ValueError):
    """Too few or unusable points for a fit; the message says how many are needed."""


@dataclass(frozen=True)
class PowerLawFit:
    """``y = a * x**b (+ c)``, fitted on ``n`` points.

    Internally ``a`` is kept as ``exp(log_a)`` at the reference scale ``x_ref`` (a power of ten
    near the data) so that fits of FLOP counts (~1e20) stay well conditioned.
    """

    log_a: float
    b: float
    x_ref: float
    c: float | None = None
    n: int = 0
    r2: float = float("nan")
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 3)), repr=False, compare=False)

    @property
    def a(self) -> float:
        """The prefactor in the original units of ``x``."""
        return math.exp(self.log_a - self.b * math.log(self.x_ref))

    def _eval(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        log_a, b, c = params[..., 0:1], params[..., 1:2], params[..., 2:3]
        y = np.exp(log_a + b * (np.log(x) - math.log(self.x_ref)))
        return y + np.nan_to_num(c)

    def predict(self, x: ArrayLike | float) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        params = np.array([self.log_a, self.b, self.c or 0.0])
        return self._eval(params, np.atleast_1d(x)).reshape(x.shape)

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
        lo, hi = np.quantile(self.boot[:, 1], [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def formula(self, y: str = "y", x: str = "C", x_unit: str = "") -> str:
        """E.g. ``err = 0.31 · (C / 1e15 FLOPs)^-0.052`` (reference scale kept for readability)."""
        exp10 = round(math.log10(self.x_ref))
        unit = f" {x_unit}" if x_unit else ""
        scale = f"({x} / 1e{exp10}{unit})" if exp10 else x
        text = f"{y} = {math.exp(self.log_a):.3g} · {scale}^{self.b:+.3g}"
        if self.c is not None:
            text += f" {'+' if self.c >= 0 else '-'} {abs(self.c):.3g}"
        return text


def _clean(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise FitError(f"x and y differ in length ({len(x)} vs {len(y)})")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    return x[keep], y[keep]


def _fit_once(x: np.ndarray, y: np.ndarray, x_ref: float, offset: bool) -> np.ndarray | None:
    lx = np.log(x) - math.log(x_ref)
    if np.ptp(lx) == 0:
        return None
    if not offset:
        if np.any(y <= 0):
            return None
        b, log_a = np.polyfit(lx, np.log(y), 1)
        return np.array([log_a, b, np.nan])
    from scipy.optimize import curve_fit

    def model(lx_, log_a, b, c):
        return np.exp(log_a + b * lx_) + c

    c0 = 0.5 * float(np.min(y))
    b0, la0 = np.polyfit(lx, np.log(np.clip(y - c0, 1e-12, None)), 1)
    try:
        params, _ = curve_fit(model, lx, y, p0=[la0, b0, c0], maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return params


def fit_power_law(
    x: ArrayLike,
    y: ArrayLike,
    *,
    offset: bool = False,
    bootstrap: int = 200,
    seed: int = 0,
) -> PowerLawFit:
    """Fit ``y = a * x^b`` (``offset=True``: ``+ c``) by least squares in log-log space.

    ``bootstrap`` resamples (with replacement) give :meth:`PowerLawFit.band`. Raises
    :class:`FitError` when fewer than 2 (3 with an offset) distinct positive points remain.
    """
    x, y = _clean(x, y)
    need = 3 if offset else 2
    if len(np.unique(x)) < need:
        raise FitError(
            f"a power-law fit needs at least {need} points at distinct x > 0; got {len(np.unique(x))}"
        )
    x_ref = 10.0 ** round(float(np.mean(np.log10(x))))
    params = _fit_once(x, y, x_ref, offset)
    if params is None:
        raise FitError("the power-law fit failed (non-positive y values or a degenerate x range)")
    lx, ly = np.log(x), np.log(np.clip(y, 1e-300, None))
    fitted = np.exp(params[0] + params[1] * (lx - math.log(x_ref))) + np.nan_to_num(params[2])
    pred = np.log(np.clip(fitted, 1e-300, None))
    ss_res, ss_tot = float(np.sum((ly - pred) ** 2)), float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(bootstrap if len(x) > need else 0):
        idx = rng.integers(0, len(x), len(x))
        p = _fit_once(x[idx], y[idx], x_ref, offset)
        if p is not None and np.all(np.isfinite(np.nan_to_num(p))):
            boot.append(p)
    return PowerLawFit(
        log_a=float(params[0]),
        b=float(params[1]),
        x_ref=x_ref,
        c=None if not offset else float(params[2]),
        n=len(x),
        r2=r2,
        boot=np.array(boot) if boot else np.empty((0, 3)),
    )


def pareto_frontier(x: ArrayLike, y: ArrayLike, minimize: bool = True) -> np.ndarray:
    """Indices of the points that no point with less (or equal) ``x`` beats, sorted by ``x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sign = 1.0 if minimize else -1.0
    order = np.lexsort((sign * y, x))
    best, keep = math.inf, []
    for i in order:
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        if sign * y[i] < best:
            best = sign * y[i]
            keep.append(i)
    return np.array(keep, dtype=int)


def binned_frontier(
    x: ArrayLike, y: ArrayLike, bins_per_decade: int = 4, minimize: bool = True
) -> np.ndarray:
    """LAION-style selection: the best point per log-spaced ``x`` bin, then its Pareto frontier."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (x > 0))
    if len(ok) == 0:
        return np.array([], dtype=int)
    bins = np.floor(np.log10(x[ok]) * bins_per_decade).astype(int)
    sign = 1.0 if minimize else -1.0
    best: dict[int, int] = {}
    for i, b in zip(ok, bins, strict=True):
        if b not in best or sign * y[i] < sign * y[best[b]]:
            best[b] = i
    chosen = np.array(sorted(best.values()), dtype=int)
    return chosen[pareto_frontier(x[chosen], y[chosen], minimize)]
