"""Power-law fits, Pareto frontier and LAION-style binning on synthetic data with known laws."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.analysis.fits import FitError, binned_frontier, fit_power_law, pareto_frontier


@pytest.mark.parametrize(("a", "b"), [(3.0, -0.07), (120.0, -0.35), (0.5, 0.5), (2e3, -0.05)])
def test_fit_recovers_exponent_within_2_percent(a: float, b: float) -> None:
    rng = np.random.default_rng(1)
    x = np.logspace(15, 21, 25)  # FLOP-like magnitudes
    y = a * x**b * np.exp(rng.normal(0, 0.01, x.size))  # 1 % multiplicative noise
    fit = fit_power_law(x, y, bootstrap=100)
    assert fit.b == pytest.approx(b, rel=0.02)
    assert fit.a == pytest.approx(a, rel=0.25)
    assert fit.r2 > 0.99
    lo, hi = fit.exponent_interval()
    assert lo <= fit.b <= hi


def test_fit_with_offset_recovers_exponent_and_floor() -> None:
    x = np.logspace(10, 14, 30)
    y = 5e3 * x**-0.4 + 0.2
    fit = fit_power_law(x, y, offset=True, bootstrap=0)
    assert fit.b == pytest.approx(-0.4, rel=0.02)
    assert fit.c == pytest.approx(0.2, rel=0.02)
    assert fit.predict(1e16) == pytest.approx(5e3 * 1e16**-0.4 + 0.2, rel=0.02)


def test_band_brackets_the_prediction_and_widens_when_extrapolating() -> None:
    rng = np.random.default_rng(0)
    x = np.logspace(12, 14, 12)
    y = 0.9 * (x / 1e12) ** -0.1 * np.exp(rng.normal(0, 0.03, x.size))
    fit = fit_power_law(x, y, bootstrap=300)
    lo, hi = fit.band([1e13, 1e16])
    pred = fit.predict([1e13, 1e16])
    assert np.all(lo <= pred) and np.all(pred <= hi)
    assert (hi[1] - lo[1]) > (hi[0] - lo[0])  # further from the data: less certain


def test_formula_names_the_reference_scale() -> None:
    fit = fit_power_law([1e15, 1e16, 1e17], [0.5, 0.4, 0.32], bootstrap=0)
    text = fit.formula("err", "C", "FLOPs")
    assert text.startswith("err = ") and "1e16 FLOPs" in text and f"{fit.b:+.3g}" in text


def test_too_few_points_is_a_clear_error() -> None:
    with pytest.raises(FitError, match="at least 2 points"):
        fit_power_law([1e12], [0.5])
    with pytest.raises(FitError, match="at least 3 points"):
        fit_power_law([1e12, 1e13], [0.5, 0.4], offset=True)
    with pytest.raises(FitError, match="differ in length"):
        fit_power_law([1, 2, 3], [1, 2])


def test_pareto_frontier_keeps_only_improvements() -> None:
    x = [1, 2, 3, 4, 5]
    y = [5.0, 3.0, 4.0, 2.0, 2.5]
    assert list(pareto_frontier(x, y)) == [0, 1, 3]
    assert list(pareto_frontier(x, y, minimize=False)) == [0]


def test_binned_frontier_takes_the_best_point_per_log_bin() -> None:
    # two runs per decade of compute; the better one of each bin, then only improvements
    x = np.array([1.1e12, 1.5e12, 1.2e13, 1.6e13, 1.1e14, 1.3e14])
    y = np.array([0.80, 0.70, 0.60, 0.65, 0.66, 0.50])
    chosen = binned_frontier(x, y, bins_per_decade=1)
    assert list(chosen) == [1, 2, 5]
