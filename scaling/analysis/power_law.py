"""A fitted power law ``y = a * x**b (+ c)``: its parameters, the bootstrap draws behind its
intervals, predictions and bands, and the formula the report prints. Fitted by
``scaling.analysis.fits``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


class FitError(ValueError):
    """Too few or unusable points for a fit; the message says how many are needed."""


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
