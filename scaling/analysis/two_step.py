"""OLMo's two-step task law (Bhagia et al. 2024): compute -> loss by a power law, then loss ->
accuracy by a sigmoid, so that an accuracy that saturates is not forced onto a straight line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

from scaling.analysis.fits import fit_power_law, refit
from scaling.analysis.power_law import ArrayLike, FitError, PowerLawFit


def sigmoid(loss: np.ndarray, a: float, l0: float, k: float, b: float) -> np.ndarray:
    """OLMo's link: ``acc = a / (1 + exp(-k (L - L0))) + b`` (k < 0: accuracy falls with loss)."""
    return a / (1.0 + np.exp(np.clip(-k * (np.asarray(loss, dtype=float) - l0), -700, 700))) + b


def _jacobian(loss: np.ndarray, a: float, l0: float, k: float, b: float) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(np.clip(-k * (loss - l0), -700, 700)))
    ds = s * (1 - s)
    return np.stack([s, -a * k * ds, a * (loss - l0) * ds, np.ones_like(loss)], axis=1)


def fit_sigmoid(loss: ArrayLike, acc: ArrayLike, start: np.ndarray | None = None) -> np.ndarray:
    """Least-squares sigmoid ``(a, L0, k, b)`` of accuracy (fraction in [0, 1]) against loss, from
    a grid of initial points (or from ``start`` alone: a bootstrap refit)."""
    loss, acc = np.asarray(loss, dtype=float), np.asarray(acc, dtype=float)
    ok = np.isfinite(loss) & np.isfinite(acc)
    loss, acc = loss[ok], acc[ok]
    if len(np.unique(loss)) < 5:
        raise FitError(f"the loss -> accuracy sigmoid has 4 parameters and needs at least 5 points at "
                       f"distinct loss; got {len(np.unique(loss))}")
    span = float(np.ptp(loss)) or 1.0
    lo = [0.0, loss.min() - 3 * span, -100.0 / span, 0.0]
    hi = [1.0, loss.max() + 3 * span, 100.0 / span, 1.0]
    best, best_sse = None, math.inf
    height, floor = min(1.0, max(0.05, 1.2 * (acc.max() - acc.min()))), max(0.0, acc.min() * 0.9)
    grid = [[height, l0, k0, floor] for k0 in (-1.0 / span, -4.0 / span, -10.0 / span)
            for l0 in np.quantile(loss, [0.25, 0.5, 0.75])]  # fmt: skip
    for p0 in [np.clip(start, lo, hi)] if start is not None else grid:
        try:
            p, _ = curve_fit(sigmoid, loss, acc, p0=p0, bounds=(lo, hi), jac=_jacobian, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((sigmoid(loss, *p) - acc) ** 2))
        if sse < best_sse:
            best, best_sse = p, sse
    if best is None:
        raise FitError("the loss -> accuracy sigmoid did not converge from any initial point")
    return best


@dataclass(frozen=True)
class TwoStepFit:
    """compute -> loss (:class:`PowerLawFit`) -> accuracy (sigmoid), with bootstrap pairs."""

    loss_fit: PowerLawFit
    link: np.ndarray  # (a, L0, k, b)
    boot: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def predict(self, x: ArrayLike | float) -> np.ndarray:
        return sigmoid(self.loss_fit.predict(x), *self.link)

    def band(self, x: ArrayLike | float, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        x = np.atleast_1d(np.asarray(x, dtype=float))
        if len(self.boot) < 2:
            y = self.predict(x)
            return y, y
        fit = self.loss_fit
        curves = np.stack([sigmoid(fit._eval(p, x), *q) for p, q in self.boot])
        lo, hi = np.nanquantile(curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi


def fit_two_step(compute: ArrayLike, loss: ArrayLike, acc: ArrayLike, *, groups: ArrayLike | None = None,
                 link_points: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None, offset: bool = False,
                 bootstrap: int = 200, seed: int = 0) -> TwoStepFit:
    """Step 1: ``loss = a · C^b (+ c)`` on (``compute``, ``loss``); step 2: ``acc = sigmoid(loss)``.

    Step 2 fits ``link_points`` = (loss, accuracy, groups) when given (OLMo fits the link on every
    intermediate evaluation, the law on the final ones), else (``loss``, ``acc``). Resamples
    draw whole groups (runs) and refit both steps.
    """
    c, lo, ac = (np.asarray(v, dtype=float).ravel() for v in (compute, loss, acc))
    g = np.asarray(groups).ravel() if groups is not None else np.arange(len(c))
    l2, a2, g2 = (lo, ac, g) if link_points is None else (np.asarray(v).ravel() for v in link_points)
    l2, a2 = l2.astype(float), a2.astype(float)
    loss_fit = fit_power_law(c, lo, offset=offset, bootstrap=0, groups=g)
    link = fit_sigmoid(l2, a2)
    rng = np.random.default_rng(seed)
    keys = np.unique(np.concatenate([g.astype(str), g2.astype(str)]))
    gs, g2s = g.astype(str), g2.astype(str)
    boot = []
    for _ in range(bootstrap):
        drawn = rng.choice(keys, size=len(keys), replace=True)
        i1 = np.concatenate([np.flatnonzero(gs == k) for k in drawn])
        i2 = np.concatenate([np.flatnonzero(g2s == k) for k in drawn])
        step1 = refit(loss_fit, c[i1], lo[i1])
        if step1 is None or len(np.unique(l2[i2])) < 5:
            continue
        try:
            boot.append((step1, fit_sigmoid(l2[i2], a2[i2], start=link)))
        except FitError:
            continue
    return TwoStepFit(loss_fit, link, boot)
