"""Power-law fits, Pareto frontier and LAION-style binning on synthetic data with known laws."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.analysis.fits import fit_power_law, rollout
from scaling.analysis.frontier import binned_frontier, pareto_frontier
from scaling.analysis.power_law import FitError
from scaling.analysis.two_step import fit_sigmoid, fit_two_step, sigmoid


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
    assert fit.n_x == 3
    text = fit.formula("err", "C", "FLOPs")
    assert text.startswith("err = ") and "1e16 FLOPs" in text and f"{fit.b:+.3g}" in text


@pytest.mark.parametrize(
    ("x", "y", "offset", "why"),
    [([1e12], [0.5], False, "got 1"),
     ([1e12, 1e13], [0.5, 0.4], False, "got 2"),
     ([1e12, 1e12, 1e12, 1e12], [0.5, 0.4, 0.45, 0.41], False, "got 1"),  # equal x: no slope to see
     ([1e12, 1e13, 1e13, 1e12], [0.5, 0.4, 0.42, 0.52], False, "got 2"),
     ([1e12, 1e13, 1e14], [0.5, 0.4, 0.3], True, "at least 4 points")],
)
def test_degenerate_input_is_refused_with_a_reason(x, y, offset, why) -> None:
    with pytest.raises(FitError, match="any curve fits exactly") as err:
        fit_power_law(x, y, offset=offset)
    assert why in str(err.value)


def test_other_bad_input_is_a_clear_error() -> None:
    with pytest.raises(FitError, match="differ in length"):
        fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(FitError, match="got 2"):  # non-positive values are not points of a law
        fit_power_law([1e12, 1e13, 1e14], [0.5, 0.4, 0.0])


def test_exponent_interval_covers_the_truth_in_90_percent_of_draws() -> None:
    """100 seeded draws of 10 compute points, 5 % log-normal noise: the 90 % bootstrap interval
    of the exponent must hold the true exponent in at least 90 of them."""
    true_b, covered, widths = -0.2, 0, []
    x = np.logspace(12, 15, 10)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        y = 0.8 * (x / 1e12) ** true_b * np.exp(rng.normal(0, 0.05, x.size))
        fit = fit_power_law(x, y, bootstrap=100, seed=seed)
        lo, hi = fit.exponent_interval()
        covered += lo <= true_b <= hi
        widths.append(hi - lo)
    assert covered >= 90
    assert 0.005 < np.median(widths) < 0.1  # an interval that says something, not [-inf, inf]


def test_bootstrap_draws_whole_runs() -> None:
    """Three evaluations per run: resampling runs, not points, gives wider (honest) intervals
    when a run's evaluations share its offset from the law."""
    rng = np.random.default_rng(0)
    runs = np.repeat(np.arange(6), 3)
    x = np.repeat(np.logspace(12, 15, 6), 3) * np.tile([0.9, 1.0, 1.1], 6)
    y = (x / 1e12) ** -0.2 * np.exp(np.repeat(rng.normal(0, 0.05, 6), 3) + rng.normal(0, 0.002, 18))
    by_run = fit_power_law(x, y, groups=runs, bootstrap=300)
    by_point = fit_power_law(x, y, bootstrap=300)
    width = lambda f: np.subtract(*f.exponent_interval()[::-1])  # noqa: E731
    assert width(by_run) > 1.2 * width(by_point)
    assert set(by_run.intervals()) == {"a", "a_ref", "b"}


def test_three_runs_get_an_interval_with_width_not_a_repeated_fit() -> None:
    """Resampling 3 runs only ever refits the same 3: the interval comes from the t distribution."""
    fit = fit_power_law([1e11, 3e11, 7e11], [0.986, 0.982, 0.975], groups=["a", "b", "c"])
    assert fit.interval == "t over 3 runs"
    lo, hi = fit.exponent_interval()
    assert lo < fit.b < hi and hi - lo > 0.005
    lo, hi = fit.band(1e12)
    assert hi[0] > lo[0]
    assert fit_power_law(np.logspace(11, 13, 8), np.logspace(0, -1, 8)).interval == "bootstrap over 8 runs"


def test_huber_loss_ignores_one_outlier_run() -> None:
    x = np.logspace(12, 15, 8)
    y = 0.8 * (x / 1e12) ** -0.2
    y[3] *= 3.0  # one broken run
    fit = fit_power_law(x, y, bootstrap=0)
    assert fit.b == pytest.approx(-0.2, abs=1e-3)


def test_rollout_predicts_each_rung_from_the_ones_below() -> None:
    x = np.repeat(np.logspace(12, 15, 5), 2)
    keys = np.repeat([f"r{i}" for i in range(5)], 2)
    rng = np.random.default_rng(1)
    y = 0.8 * (x / 1e12) ** -0.2 * np.exp(rng.normal(0, 0.01, x.size))
    steps, skipped = rollout(x, y, keys, bootstrap=100)
    assert [s.key for s in steps] == ["r3", "r4"]  # r0..r2 have fewer than 3 rungs below them
    assert len(skipped) == 2 and all("needs at least 3 points" in s for s in skipped)
    for step in steps:
        assert abs(step.rel_error) < 0.03 and step.low <= step.predicted <= step.high
        assert step.n_fit_x >= 3


def test_two_step_recovers_a_sigmoid_of_a_power_law() -> None:
    rng = np.random.default_rng(0)
    c = np.repeat(np.logspace(12, 15, 6), 4) * np.tile([0.25, 0.5, 0.75, 1.0], 6)
    runs = np.repeat(np.arange(6), 4)
    loss = 5.0 * (c / 1e12) ** -0.15 + rng.normal(0, 0.01, c.size)
    acc = sigmoid(loss, 0.9, 3.0, -3.0, 0.02) + rng.normal(0, 0.003, c.size)
    two = fit_two_step(c, loss, acc, groups=runs, bootstrap=50)
    assert two.loss_fit.b == pytest.approx(-0.15, abs=0.01)
    truth = sigmoid(5.0 * (3e15 / 1e12) ** -0.15, 0.9, 3.0, -3.0, 0.02)
    assert float(two.predict(3e15)) == pytest.approx(truth, abs=0.03)
    lo, hi = two.band(3e15)
    assert lo[0] <= float(two.predict(3e15)) <= hi[0]
    with pytest.raises(FitError, match="at least 5 points"):
        fit_sigmoid([1.0, 2.0, 3.0], [0.5, 0.3, 0.1])


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
