"""The statistics `make bench-d3rlpy` reports returns with (rliable's, computed in numpy)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_d3rlpy as bench


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [4, 5, 10, 13])
def test_iqm_is_the_mean_of_the_middle_half(seed, n):
    runs = np.random.default_rng(seed).normal(300, 100, size=n)
    cut = n // 4  # scipy.stats.trim_mean(x, 0.25) drops floor(n / 4) runs at each end
    middle = sorted(runs)[cut : n - cut]
    assert bench.iqm(runs) == pytest.approx(sum(middle) / len(middle))
    # Batched over resamples: one IQM per row.
    table = np.stack([runs, runs[::-1], runs + 1])
    np.testing.assert_allclose(bench.iqm(table), [bench.iqm(runs)] * 2 + [bench.iqm(runs) + 1])


def test_an_outlier_seed_moves_the_iqm_less_than_the_mean():
    runs = np.array([480.0, 490, 500, 470, 495, 485, 500, 475, 490, 20])
    assert abs(bench.iqm(runs) - 487.5) < 5 < abs(runs.mean() - 487.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probability_of_improvement_counts_pairs_and_halves_ties(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 5, size=10).astype(float), rng.integers(0, 5, size=7).astype(float)
    pairs = list(itertools.product(x, y))
    expected = sum((a > b) + 0.5 * (a == b) for a, b in pairs) / len(pairs)
    assert bench.probability_of_improvement(x, y) == pytest.approx(expected)
    assert bench.probability_of_improvement(x, y) + bench.probability_of_improvement(
        y, x
    ) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_interval_holds_the_estimate_and_shrinks_with_more_runs(seed):
    rng = np.random.default_rng(seed)
    few, many = rng.normal(300, 100, size=10), rng.normal(300, 100, size=160)
    est, low, high = bench.bootstrap_ci(bench.iqm, few, reps=5000)
    assert low <= est <= high and est == pytest.approx(bench.iqm(few))
    _, low_many, high_many = bench.bootstrap_ci(bench.iqm, many, reps=5000)
    assert high_many - low_many < (high - low) / 2
    # A difference between two libraries: each side resampled on its own.
    diff = bench.bootstrap_ci(lambda a, b: bench.iqm(a) - bench.iqm(b), few + 50, few, reps=5000)
    assert diff[0] == pytest.approx(50.0) and diff[1] < 50 < diff[2]
    # Identical runs: no spread, the interval is the point.
    assert bench.bootstrap_ci(bench.iqm, np.full(10, 500.0), reps=100) == (500.0, 500.0, 500.0)
