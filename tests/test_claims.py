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
from offline_rl.algorithms.experiments import (
    cql_vs_naive,
    distribution_shift,
    online_vs_offline,
    quality_sweep,
    stitching,
)
from offline_rl.algorithms.tabular import offline_q_learning
from offline_rl.behavior import FAMILY_B, narrow_expert_dataset, quality_dataset, stitching_dataset
from offline_rl.envs import get_layout, transition_model
from offline_rl.online import online_q_learning
from offline_rl.planning import greedy_policy, policy_evaluation, rollout_return, value_iteration

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
    cov, ret = demo1["coverage"].mean(axis=1), demo1["returns"].mean(axis=1)
    assert np.all(ret[cov < 0.5] <= -25), "text: 'stays near -30 until about half is covered'"


def test_demo1_uses_the_students_coverage_function() -> None:
    """The widget measures coverage with the function it is given (a wrong one shows up)."""
    res = widgets.coverage_sweep(lambda d, s, a: np.ones((s, a)), sizes=(1, 2), seeds=SEEDS)
    assert np.all(res["coverage"] == 1.0)
    right = widgets.coverage_sweep(coverage_counts, sizes=(1, 2), seeds=SEEDS)
    assert np.all(right["coverage"] < 0.5)


# --------------------------------------------------------------------------- stitching data
#: Stitching datasets (copies of family A, copies of family B): A is the majority in each, as in
#: the notebook's (6, 4). The scripted data have no randomness, so the five "seeds" are five
#: different mixes.
MIXES = ((6, 4), (3, 2), (5, 4), (7, 3), (9, 6))
STITCH = get_layout("stitch")


def notebook_candidates(data: Any) -> dict[str, np.ndarray]:
    """The offline-policy-selection cell's candidates, built with the reference learners."""
    counts = coverage_counts(data, STITCH.n_states, STITCH.n_actions)
    bc = np.argmax(counts, axis=1)
    route_b = bc.copy()
    for cell, action in FAMILY_B.items():
        route_b[STITCH.state_index(cell)] = action
    return {
        "CQL (α=1)": greedy_policy(offline_q_learning(data, 25, 4, 0.9, alpha=1.0)),
        "route of family B": route_b,
        "BC": bc,
        "naive Q": greedy_policy(offline_q_learning(data, 25, 4, 0.9, alpha=0.0)),
    }


@pytest.mark.parametrize("mix", MIXES)
def test_fqe_ranks_naive_first_and_is_exact_on_the_data(mix: tuple[int, int]) -> None:
    """Claims: 'the candidates' true values differ'; 'FQE ranks naive Q first: it scores 0 where
    the truth is -10'; 'restricted to candidates that never leave the data, FQE is exact and
    picks the truly best policy'."""
    data = stitching_dataset(*mix)
    rows = widgets.policy_selection(data, STITCH, notebook_candidates(data))
    true = sorted({round(r["true"], 6) for r in rows.values()})
    assert len(true) >= 3 and true[-1] - true[-2] > 1.0, f"true values too close: {true}"
    naive = rows["naive Q"]
    assert naive["fqe_rank"] == 1 and naive["true_rank"] > 1, rows
    assert naive["fqe"] == 0.0 and naive["true"] == pytest.approx(-10.0), naive
    assert naive["off_data"] > 0.0
    for name, r in rows.items():
        if r["off_data"] == 0.0:
            assert r["fqe"] == pytest.approx(r["true"], abs=1e-6), (name, r)
    on_data = [k for k in rows if rows[k]["off_data"] == 0.0]
    best = min(on_data, key=lambda k: rows[k]["fqe_rank"])
    assert rows[best]["true_rank"] == 1 and best == "CQL (α=1)", rows


def test_policy_selection_table_prints_rounded_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """Results are printed for people: two decimals, no raw floats or dicts."""
    data = stitching_dataset()
    widgets.policy_selection_table(data, STITCH, notebook_candidates(data))
    out = capsys.readouterr().out
    assert "FQE picks 'naive Q': true rank 3 of 4." in out
    assert "{" not in out and "-10.000000" not in out, out


# --------------------------------------------------------------------------- CQL lower bound
def stochastic_policy_value(layout: Any, probs: np.ndarray) -> np.ndarray:
    """Exact V^π (S,) of a stochastic policy ``probs`` (S, A) on the true grid."""
    lay = get_layout(layout)
    P, R, done = transition_model(lay)
    S = lay.n_states
    P_pi = np.zeros((S, S))
    for a in range(lay.n_actions):
        np.add.at(P_pi, (np.arange(S), P[:, a]), probs[:, a] * ~done[:, a])
    return np.linalg.solve(np.eye(S) - lay.gamma * P_pi, (probs * R).sum(axis=1))


def cql_policy_evaluation(
    data: Any, probs: np.ndarray, gamma: float, alpha: float, n_iters: int = 1000
) -> np.ndarray:
    """Tabular CQL evaluation of a fixed π (Kumar et al. 2020, Thm 3.2): B^π backup, push-down
    under μ = π, push-up under the data. Exact fixed-point iteration of
    Q(s,a) = y^π(s,a) - α (π(a|s) / π̂_β(a|s) - 1) on the data's pairs. Returns V̂^π (S,)."""
    S, A = probs.shape
    counts = coverage_counts(data, S, A).astype(float)
    visited = counts.sum(axis=1) > 0
    pi_data = np.divide(counts, counts.sum(axis=1, keepdims=True), out=np.zeros((S, A)),
                        where=visited[:, None])  # fmt: skip
    assert np.all(probs[visited][counts[visited] == 0] == 0), "π must stay on the data's actions"
    s, a, s2 = data.observations, data.actions, data.next_observations
    r, done = data.rewards.astype(float), data.terminals
    live_next = s2[~done]
    assert visited[live_next].all(), "every non-terminal next state must be in the data"
    ratio = np.divide(probs, pi_data, out=np.zeros((S, A)), where=counts > 0)
    Q = np.zeros((S, A))
    for _ in range(n_iters):
        target = r + gamma * (1.0 - done) * (probs[s2] * Q[s2]).sum(axis=1)
        sums = np.bincount(s * A + a, weights=target, minlength=S * A).reshape(S, A)
        y = np.divide(sums, counts, out=np.zeros((S, A)), where=counts > 0)
        Q = np.where(counts > 0, y - alpha * (ratio - 1.0), 0.0)
    return (probs * Q).sum(axis=1)


def check_lower_bound(v_hat: np.ndarray, v_true: np.ndarray, on_data: np.ndarray) -> None:
    """The chapter's bound: V̂ <= V on every state of the data (1e-9 for round-off)."""
    excess = (v_hat - v_true)[on_data]
    assert np.all(excess <= 1e-9), f"V̂ exceeds the true value by up to {excess.max():.4f}"


LOWER_BOUND_DATA = {
    "cliff ε=0 (Demo 3)": lambda seed: narrow_expert_dataset("cliff", 20, 0.0, seed),
    "cliff ε=0.1": lambda seed: narrow_expert_dataset("cliff", 20, 0.1, seed),
    "cliff ε=0.3": lambda seed: narrow_expert_dataset("cliff", 20, 0.3, seed),
    "stitch": lambda seed: stitching_dataset(*MIXES[seed]),
}


@pytest.mark.parametrize("name", LOWER_BOUND_DATA)
@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
def test_cql_evaluation_is_a_lower_bound_for_every_alpha(name: str, alpha: float) -> None:
    """Claim (Thm 3.2 setting): for a fixed π on the data's actions, B^π backup and μ = π,
    V̂^π <= V^π on every data state, for every α > 0, strictly where π differs from the data."""
    layout = "stitch" if name == "stitch" else "cliff"
    lay = get_layout(layout)
    for seed in SEEDS:
        data = LOWER_BOUND_DATA[name](seed)
        counts = coverage_counts(data, lay.n_states, lay.n_actions)
        on_data = counts.sum(axis=1) > 0
        bc = np.eye(lay.n_actions)[np.argmax(counts, axis=1)]  # the data's mode
        on_support = (counts > 0) / np.maximum((counts > 0).sum(axis=1, keepdims=True), 1)
        for probs in (bc, on_support):
            v_hat = cql_policy_evaluation(data, probs, lay.gamma, alpha)
            v_true = stochastic_policy_value(layout, probs)
            check_lower_bound(v_hat, v_true, on_data)
            pi_data = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            if np.abs(probs - pi_data)[on_data].max() > 1e-9:  # π differs from the data somewhere
                assert (v_true - v_hat)[on_data].max() > 1e-3 * alpha


def one_state_counterexample() -> Any:
    """One state; the data take action 0 nine times (reward 1), action 1 once (reward 0)."""
    from offline_rl.datasets import OfflineDataset

    return OfflineDataset(
        observations=np.zeros(10, dtype=np.int64), actions=np.array([0] * 9 + [1]),
        rewards=np.array([1.0] * 9 + [0.0], dtype=np.float32),
        next_observations=np.zeros(10, dtype=np.int64), terminals=np.ones(10, dtype=bool),
        truncations=np.zeros(10, dtype=bool), episode_starts=np.arange(10),
    )  # fmt: skip


def test_greedy_cql_value_is_not_a_lower_bound() -> None:
    """Claim: 'neither theorem bounds the greedy policy's value': Q̂(s,0) ≈ 1.02 / 1.07 / 1.1 at
    α = 0.1 / 1 / 5 against the true 1; and on Demo 3's data greedy V̂ exceeds V by <= 0.5."""
    data = one_state_counterexample()
    for alpha, expected in ((0.1, 1.02), (1.0, 1.07), (5.0, 1.1)):
        q = offline_q_learning(data, 1, 2, 0.9, alpha=alpha)
        assert q[0].argmax() == 0 and q[0, 0] > 1.0 and q[0, 0] == pytest.approx(expected, abs=0.01)
        with pytest.raises(AssertionError, match="exceeds"):  # the old wording's check
            check_lower_bound(q.max(axis=1), np.array([1.0]), np.array([True]))
    cliff = get_layout("cliff")
    data = narrow_expert_dataset("cliff", 20, 0.0, 0)
    on_data = coverage_counts(data, 30, 4).sum(axis=1) > 0
    for alpha in (0.01, 0.1, 1.0, 10.0, 100.0):  # Demo 3's slider, α > 0
        q = offline_q_learning(data, 30, 4, 0.9, alpha=alpha)
        excess = (q.max(axis=1) - policy_evaluation(cliff, greedy_policy(q)))[on_data].max()
        assert 0.0 < excess <= 0.5, (alpha, excess)


# --------------------------------------------------------------------------- Demos 2 and 3
def test_demo2_unseen_zero_beats_right_only_near_the_start() -> None:
    """Demo 2's text: unseen actions keep 0 where the truth is -100; 'right' is worth < 0 only on
    the first two bridge cells; argmax's tie-break picks 'up' into the lava at the start.
    (ε = 0 expert data are deterministic: the five seeds give the same dataset.)"""
    cliff = get_layout("cliff")
    q_star = value_iteration(cliff)[1]
    for seed in SEEDS:
        res = distribution_shift(epsilon=0.0, seed=seed)
        q, counts = res["q"], res["counts"]
        unseen = (counts == 0) & (counts.sum(axis=1, keepdims=True) > 0)
        bridge = [cliff.state_index((1, c)) for c in range(9)]
        assert np.all(q[unseen] == 0.0)
        assert np.all(unseen[bridge][:, [0, 2]]) and np.all(q_star[bridge][:, [0, 2]] == -100.0)
        right_negative = [c for c, s in enumerate(bridge) if q[s, 1] < 0]
        assert right_negative == [0, 1], right_negative
        assert greedy_policy(q)[cliff.start_state] == 0  # 'up': the first of the tied zeros
        assert res["naive_outcome"] == "pit"


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 10.0, 100.0])
def test_demo3_any_cql_weight_walks_the_bridge(alpha: float) -> None:
    """Demo 3's text: α = 0 gives Demo 2's failure; from small α on the unseen values drop below
    the seen ones and the greedy policy reaches the goal (deterministic data, 5 seeds)."""
    for seed in SEEDS:
        res = cql_vs_naive(alpha=alpha, epsilon=0.0, seed=seed)
        assert res["naive"]["outcome"] == "pit"
        assert res["cql"]["outcome"] == "goal" and res["cql"]["return"] == res["optimal_return"]
        assert res["cql"]["mean_q_unseen"] < res["cql"]["mean_q_seen"] - 1.0
        assert res["cql"]["mean_q_unseen"] < res["naive"]["mean_q_unseen"] - 1.0


# --------------------------------------------------------------------------- Demo 4
@pytest.fixture(scope="module")
def demo4() -> dict[str, np.ndarray]:
    import inspect

    defaults = inspect.signature(widgets.quality_demo).parameters
    seeds, n_episodes = defaults["seeds"].default, defaults["n_episodes"].default
    assert len(seeds) >= 5
    return quality_sweep(seeds=seeds, n_episodes=n_episodes, progress=False)


def test_demo4_cql_at_least_as_good_as_bc_and_naive_at_every_quality(demo4: dict) -> None:
    """Demo 4's text: in the seed mean CQL >= BC and CQL >= naive at every quality; expert
    data give the optimal policy to all three; worse data hurt BC more than CQL."""
    assert np.all(demo4["cql"] >= demo4["bc"]) and np.all(demo4["cql"] >= demo4["naive"]), demo4
    for key in ("bc", "naive", "cql"):
        assert demo4[key][-1] == demo4["optimal"]
    assert demo4["optimal"] - demo4["bc"][0] > demo4["optimal"] - demo4["cql"][0] + 10


def test_demo4_learning_curves() -> None:
    """Learning-curve text: CQL reaches the optimum within a few dozen iterations and stays;
    naive Q ends worse than it started (5 seeds, seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    curves = widgets.quality_learning_curves(offline_q_learning, coverage_counts)
    optimal = rollout_return(OPEN, greedy_policy(value_iteration(OPEN)[1]))
    reached = np.flatnonzero(curves["n_iters"] >= 30)
    assert np.all(curves["cql"][reached] == optimal), curves
    assert curves["naive"][-1] < curves["naive"][0], curves


# --------------------------------------------------------------------------- section 4
@pytest.mark.parametrize("mix", MIXES)
def test_stitching_claims_on_every_mix(mix: tuple[int, int]) -> None:
    """Stitching text: CQL (α = 1) +3 = optimal > best trajectory +1 > BC -17 > naive -20;
    naive's first move is the unseen 'down', which bumps the edge."""
    res = stitching(alpha=1.0, dataset=stitching_dataset(*mix))
    assert res["cql_return"] == res["optimal_return"] == 3.0
    assert res["best_trajectory_return"] == 1.0 and res["bc_return"] == -17.0
    assert res["naive_q_return"] == -20.0
    q = offline_q_learning(stitching_dataset(*mix), 25, 4, 0.9)
    assert greedy_policy(q)[STITCH.start_state] == 2 and q[STITCH.start_state, 2] == 0.0


def test_more_of_the_same_narrow_data_does_not_help() -> None:
    """Misconception box: 20 or 200 cliff-expert episodes hold the same pairs and naive Q walks
    into the lava from both; 50 random episodes on 'open' make naive Q and CQL optimal while BC
    still times out at -30 (5 seeds each)."""
    for seed in SEEDS:
        small, big = (narrow_expert_dataset("cliff", n, 0.0, seed) for n in (20, 200))
        assert np.array_equal(coverage_counts(small, 30, 4) > 0, coverage_counts(big, 30, 4) > 0)
        for data in (small, big):
            q = offline_q_learning(data, 30, 4, 0.9)
            assert rollout_return("cliff", greedy_policy(q)) == -100.0
    optimal = rollout_return(OPEN, greedy_policy(value_iteration(OPEN)[1]))
    for seed in SEEDS:
        data = quality_dataset("open", 0.0, 50, seed)
        for alpha in (0.0, 1.0):
            q = offline_q_learning(data, 36, 4, 0.9, alpha=alpha)
            assert rollout_return(OPEN, greedy_policy(q)) == optimal, (seed, alpha)
        assert rollout_return(OPEN, np.argmax(coverage_counts(data, 36, 4), axis=1)) == -30.0


def test_greedy_bc_reproduces_the_mode_not_the_average() -> None:
    """BC text: from a noisy expert (ε = 0.5, 10 episodes) greedy BC is optimal while the data's
    average return is >= 5 below it (5 seeds)."""
    optimal = rollout_return(OPEN, greedy_policy(value_iteration(OPEN)[1]))
    for seed in SEEDS:
        data = narrow_expert_dataset("open", 10, 0.5, seed)
        bc = np.argmax(coverage_counts(data, 36, 4), axis=1)
        assert rollout_return(OPEN, bc) == optimal
        assert data.episode_returns().mean() <= optimal - 5


def test_hybrid_start_is_near_optimal_from_the_first_episodes() -> None:
    """Hybrid text: from the CQL table the first 10 online episodes average within 2 of the
    optimum; from zeros they average >= 10 below it (5 dataset seeds)."""
    optimal = rollout_return(OPEN, greedy_policy(value_iteration(OPEN)[1]))
    _, from_zero = online_q_learning(OPEN, 10, 0, progress=False)
    assert from_zero.mean() <= optimal - 10
    for seed in SEEDS:
        q = offline_q_learning(quality_dataset("open", 0.5, 40, seed), 36, 4, 0.9, alpha=1.0)
        _, from_cql = online_q_learning(OPEN, 10, 0, q_init=q, progress=False)
        assert from_cql.mean() >= optimal - 2, (seed, from_cql)


def test_unseen_values_do_not_converge_but_seen_ones_do() -> None:
    """Question 7's note: at α = 100 the unseen mean is about -5, -11, -13 after 1,000, 5,000 and
    20,000 iterations; the seen values drift less than that between 5,000 and 20,000."""
    data = stitching_dataset()
    counts = coverage_counts(data, 25, 4)
    unseen = (counts == 0) & (counts.sum(axis=1, keepdims=True) > 0)
    qs = [offline_q_learning(data, 25, 4, 0.9, alpha=100.0, n_iters=n) for n in (1000, 5000, 20000)]
    means = [q[unseen].mean() for q in qs]
    assert np.allclose(means, [-5.3, -11.0, -13.3], atol=0.1), means
    seen_drift = np.abs(qs[2] - qs[1])[counts > 0].mean()
    assert seen_drift < abs(means[2] - means[1]), (seen_drift, means)


def test_large_alpha_limit_is_log_behavior_plus_constant() -> None:
    """Q14 solution: Q(M, up) - Q(M, right) -> log(0.6 / 0.4) with no α in front: 0.26 at
    α = 100, 0.40 at α = 1000."""
    data = stitching_dataset()
    m = STITCH.state_index((2, 2))
    gaps = []
    for alpha in (100.0, 1000.0):
        q = offline_q_learning(data, 25, 4, 0.9, alpha=alpha)
        gaps.append(q[m, 0] - q[m, 1])
    assert gaps[0] == pytest.approx(0.26, abs=0.01) and gaps[1] == pytest.approx(0.40, abs=0.01)
    assert abs(gaps[1] - np.log(1.5)) < 0.01


def test_importance_weight_second_moment_is_one_plus_chi_square() -> None:
    """Information-theoretic view: E_β[w²] = 1 + χ²(π‖β), it multiplies over steps, exceeds
    exp(KL), and the effective sample size of n weights is about n / (1 + χ²)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        pi, beta = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(4))
        chi2 = np.sum(pi**2 / beta) - 1.0
        kl = np.sum(pi * np.log(pi / beta))
        assert np.sum(beta * (pi / beta) ** 2) == pytest.approx(1 + chi2)
        assert 1 + chi2 >= np.exp(kl)
        horizon = 3  # same per-step policies: trajectory weight moment is the product
        assert np.sum(beta * (pi / beta) ** 2) ** horizon == pytest.approx((1 + chi2) ** horizon)
        a = rng.choice(4, size=200_000, p=beta)
        w = pi[a] / beta[a]
        ess = w.sum() ** 2 / np.sum(w**2)
        assert ess == pytest.approx(len(w) / (1 + chi2), rel=0.05)
