"""The claim registry: every sentence of the chapter that states a result, checked on ≥ 5 seeds.

Each test names the claim it proves and runs the configuration the notebook runs (the
widgets' own settings are imported, not copied). Expected values come from the reference
package (exact planning, the reference learners), never typed in. tests/CLAIMS.md lists the
claims, their tests, seeds, margins and the numbers measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from offline_rl import widgets
from offline_rl.algorithms.coverage import coverage_counts
from offline_rl.algorithms.experiments import online_vs_offline
from offline_rl.envs import get_layout
from offline_rl.online import online_q_learning
from offline_rl.planning import greedy_policy, rollout_return, value_iteration

SEEDS = tuple(range(5))
OPEN = get_layout("open")


# --------------------------------------------------------------------------- Demo 1
def check_demo1_claim(coverage: np.ndarray, returns: np.ndarray, online_final: float) -> None:
    """Demo 1's text: with more coverage the offline agent does better (seed mean, monotone),
    and it matches the online agent only at the largest, near-complete coverage.

    Args:
        coverage, returns: (K, n_seeds) per setting of the slider (in slider order) and seed.
        online_final: the online agent's final greedy return.
    """
    assert returns.shape[1] >= 5, f"a claim needs >= 5 seeds, got {returns.shape[1]}"
    cov, ret = coverage.mean(axis=1), returns.mean(axis=1)
    assert np.all(np.diff(cov) > 0), f"mean coverage must grow along the slider: {np.round(cov, 3)}"
    assert np.all(np.diff(ret) >= 0), (
        f"the offline return must not fall as coverage grows (seed mean): {np.round(ret, 2)} "
        f"at coverage {np.round(cov, 2)}"
    )
    assert np.all(returns[-1] == online_final), (
        f"at the largest dataset every seed must match the online agent ({online_final}): "
        f"{returns[-1]}"
    )
    short = cov < 0.9  # margin: 10 return units below the online agent until coverage >= 90 %
    assert short.any() and np.all(ret[short] <= online_final - 10), (
        f"below 90 % coverage the offline agent must fall short of the online agent by >= 10: "
        f"{np.round(ret[short], 2)} vs {online_final}"
    )


@pytest.fixture(scope="module")
def demo1() -> dict[str, Any]:
    return online_vs_offline(progress=False)


def test_demo1_online_agent_reaches_the_optimum_on_every_seed() -> None:
    """Claim: 'the online agent fixes its own mistakes by exploring' (300 episodes, 5 seeds)."""
    optimal = rollout_return(OPEN, greedy_policy(value_iteration(OPEN)[1]))
    finals = [
        rollout_return(OPEN, greedy_policy(online_q_learning(OPEN, 300, s, progress=False)[0]))
        for s in SEEDS
    ]
    assert finals == [optimal] * len(SEEDS), f"online final returns {finals}, optimal {optimal}"


def test_demo1_return_rises_with_coverage(demo1: dict[str, Any]) -> None:
    """Claim: 'more coverage, better offline agent; it matches the online agent only when the
    data cover (nearly) everything' on the notebook's sizes and seeds."""
    assert tuple(demo1["sizes"]) == widgets.DEMO1_SIZES
    assert demo1["online_final_return"] == demo1["optimal_return"]
    # nested datasets: coverage can only grow along the slider, on every seed
    assert np.all(np.diff(demo1["coverage"], axis=0) >= 0)
    check_demo1_claim(demo1["coverage"], demo1["returns"], demo1["online_final_return"])


def test_demo1_uses_the_students_coverage_function() -> None:
    """The widget measures coverage with the function it is given (a wrong one shows up)."""
    res = widgets.coverage_sweep(
        lambda d, s, a: np.ones((s, a)), sizes=(1, 2), seeds=SEEDS
    )
    assert np.all(res["coverage"] == 1.0)
    right = widgets.coverage_sweep(coverage_counts, sizes=(1, 2), seeds=SEEDS)
    assert np.all(right["coverage"] < 0.5)
