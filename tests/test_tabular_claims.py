"""The chapter's claims, proven numerically on the tabular reference implementation.

Returns are undiscounted returns of the greedy policy's rollout from the start cell.
"""

import numpy as np
import pytest
from offline_rl.algorithms.coverage import bc_policy_from_counts, coverage_counts
from offline_rl.algorithms.experiments import (
    alpha_sweep,
    cql_vs_naive,
    distribution_shift,
    offline_policy_selection,
    offline_to_online,
    quality_sweep,
    stitching,
)
from offline_rl.algorithms.tabular import (
    discrete_bcq_policy,
    fitted_q_evaluation,
    naive_offline_q,
    offline_q_learning,
    tabular_cql,
)
from offline_rl.behavior import narrow_expert_dataset, quality_dataset, stitching_dataset
from offline_rl.envs import get_layout
from offline_rl.planning import greedy_policy, policy_evaluation, rollout_return

CLIFF = get_layout("cliff")


@pytest.fixture(scope="module")
def cliff_data():
    """Near-expert (ε = 0.1) data on the bridge: narrow coverage."""
    return narrow_expert_dataset("cliff", n_episodes=20, epsilon=0.1, seed=0)


def test_naive_overestimates_unseen_actions_and_fails_on_cliff(cliff_data):
    res = distribution_shift()
    counts, q, q_star = res["counts"], res["q"], res["q_star"]
    visited = (counts.sum(axis=1) > 0)[:, None]
    unseen = visited & (counts == 0)
    assert unseen.any()
    # Unseen pairs keep their initial 0 while the truth there is lava (-100): overestimates.
    assert np.all(q[unseen] == 0.0)
    assert np.mean(q[unseen] > q_star[unseen]) > 0.8
    assert res["unseen_error"] > 50 and abs(res["seen_error"]) < 1.0
    # ... and the greedy policy follows one of them into the lava.
    assert res["naive_outcome"] == "pit"
    assert res["naive_return"] <= res["optimal_return"] - 50


def test_cql_pushes_ood_q_down_and_avoids_the_lava():
    res = cql_vs_naive(alpha=1.0)
    # The seen mean includes the data's few lava steps (-100), so compare unseen values across
    # methods and check that greedy CQL never picks an action the data lacks.
    assert res["cql"]["mean_q_unseen"] < res["naive"]["mean_q_unseen"] - 1.0
    assert res["naive"]["ood_fraction"] > 0.0
    assert res["cql"]["ood_fraction"] == 0.0
    assert res["cql"]["outcome"] == "goal"
    assert res["cql"]["return"] == res["optimal_return"] == 2.0
    assert res["cql"]["return"] > res["naive"]["return"]


@pytest.mark.parametrize("alpha", [1.0, 5.0])
def test_naive_believes_in_values_its_policy_does_not_get(cliff_data, alpha):
    """Naive Q's greedy value is far above what its policy earns; CQL's policy does better.
    (The CQL lower bound itself is tested where it holds: tests/test_claims.py.)"""
    S, A, gamma = CLIFF.n_states, CLIFF.n_actions, CLIFF.gamma
    counts = coverage_counts(cliff_data, S, A)
    on_data = counts.sum(axis=1) > 0
    q_cql = tabular_cql(cliff_data, S, A, gamma, alpha=alpha)
    q_naive = naive_offline_q(cliff_data, S, A, gamma)
    gap = q_naive.max(axis=1) - policy_evaluation(CLIFF, greedy_policy(q_naive))
    assert gap[on_data].max() > 50  # naive believes in a value the policy does not get
    assert rollout_return(CLIFF, greedy_policy(q_cql)) > rollout_return(
        CLIFF, greedy_policy(q_naive)
    )


def test_stitching_design_numbers():
    # Derived from the "stitch" layout (step -1, goal +10, pit -10, horizon 20, γ = 0.9):
    #  best trajectory: family B, 9 steps of -1 then +10                       = +1
    #  BC: argmax of counts is "up" at S and M (6 vs 4) -> family A into pit   = -17
    #  naive: at S seen actions have Q < 0 (up -0.43, right -1) but unseen
    #         "down" keeps 0, so it bumps the edge for the whole horizon       = -20
    #  CQL: A's first half + B's second half, 7 steps of -1 then +10           = +3
    res = stitching(alpha=1.0)
    assert res["best_trajectory_return"] == 1.0
    assert res["bc_return"] == -17.0
    assert res["naive_q_return"] == -20.0
    assert res["cql_return"] == 3.0 == res["optimal_return"]
    assert res["cql_return"] > res["best_trajectory_return"] > res["bc_return"]


def test_alpha_sweep_from_stitching_to_behavior_cloning():
    res = alpha_sweep(alphas=(0.0, 0.1, 1.0, 30.0, 100.0), progress=False)
    np.testing.assert_array_equal(res["returns"], [-20.0, 3.0, 3.0, 3.0, -17.0])
    assert res["returns"][-1] == res["bc_return"]  # α = 100 collapses to BC
    assert np.all(np.diff(res["mean_q_unseen"][:3]) < 0)  # more α, lower OOD values


def test_alpha_threshold_matches_analysis():
    # At M, fixed point: π_D(a)(Q - y) + α(softmax_a - π_D(a)) = 0 with π_D = (0.6 up, 0.4 right).
    # Up and right tie (softmax 1/2 each) when y_right - y_up = α (0.1/0.6 + 0.1/0.4) = 5α/12,
    # with y_up = -1 + 0.9 * (-10) = -10 and y_right = -1 + 0.9 * 6.2 = 4.58: α* = 34.99.
    ds = stitching_dataset()
    assert rollout_return("stitch", greedy_policy(offline_q_learning(ds, 25, 4, 0.9, 34.0))) == 3
    assert rollout_return("stitch", greedy_policy(offline_q_learning(ds, 25, 4, 0.9, 36.0))) == -17


def test_returns_rise_with_data_quality():
    res = quality_sweep(qualities=(0.0, 0.5, 1.0), seeds=(0, 1, 2), progress=False)
    for method in ("bc", "cql"):
        means = res[method]
        assert means[2] > means[0] + 5
        assert means[0] <= means[1] <= means[2]
    assert res["cql"][2] == res["optimal"]


def test_bcq_filter_interpolates_between_greedy_and_bc():
    ds = stitching_dataset()
    counts = coverage_counts(ds, 25, 4)
    q = naive_offline_q(ds, 25, 4, 0.9)
    visited = counts.sum(axis=1) > 0
    bcq_all = discrete_bcq_policy(q, counts, threshold=0.0)
    np.testing.assert_array_equal(bcq_all, greedy_policy(q))
    bcq_top = discrete_bcq_policy(q, counts, threshold=1.0)
    np.testing.assert_array_equal(bcq_top[visited], bc_policy_from_counts(counts)[visited])
    # threshold 0.5 keeps both data actions at S and M (4/6 >= 0.5) but no unseen one: stitches
    assert rollout_return("stitch", discrete_bcq_policy(q, counts, threshold=0.5)) == 3.0
    with pytest.raises(ValueError, match=r"\(S, A\)"):
        discrete_bcq_policy(q, counts[:5], 0.5)


def test_fqe_exact_in_distribution_and_fooled_out_of_it():
    res = offline_policy_selection()
    c = res["candidates"]
    for name in ("bc", "cql"):  # in-distribution candidates: FQE equals the true value
        assert c[name]["ood_fraction"] == 0.0
        assert c[name]["fqe_value"] == pytest.approx(c[name]["true_value"], abs=1e-6)
    assert c["naive"]["fqe_value"] > c["naive"]["true_value"] + 5
    assert res["true_best"] == "cql" and res["picked_best_in_distribution"]
    q = fitted_q_evaluation(stitching_dataset(), np.zeros(25, dtype=np.int64), 25, 4, 0.9)
    assert q.shape == (25, 4)


def test_offline_to_online_starts_better():
    res = offline_to_online(n_episodes=30, progress=False)
    assert res["from_cql"][:10].mean() > res["from_scratch"][:10].mean()


def test_determinism_same_seed_same_results():
    a = quality_sweep(qualities=(0.0, 1.0), seeds=(3,), progress=False)
    b = quality_sweep(qualities=(0.0, 1.0), seeds=(3,), progress=False)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    ds = quality_dataset("open", 0.0, 5, seed=7)
    np.testing.assert_array_equal(
        tabular_cql(ds, 36, 4, 0.9, alpha=1.0), tabular_cql(ds, 36, 4, 0.9, alpha=1.0)
    )


def test_tabular_bad_inputs():
    ds = stitching_dataset()
    with pytest.raises(ValueError, match="alpha"):
        offline_q_learning(ds, 25, 4, 0.9, alpha=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        naive_offline_q(ds, 25, 4, 1.5)
    with pytest.raises(ValueError, match="n_states"):
        naive_offline_q(ds, 5, 4, 0.9)
    with pytest.raises(ValueError, match="policy"):
        fitted_q_evaluation(ds, np.zeros(3, dtype=np.int64), 25, 4, 0.9)
    onehot = narrow_expert_dataset("cliff", 1)
    fields = onehot.as_dict()
    fields["observations"] = np.eye(30)[fields["observations"]]
    fields["next_observations"] = np.eye(30)[fields["next_observations"]]
    from offline_rl.datasets import OfflineDataset

    with pytest.raises(ValueError, match="integer state"):
        naive_offline_q(OfflineDataset(**fields), 30, 4, 0.9)
    with pytest.raises(ValueError, match="alphas"):
        alpha_sweep(alphas=(-1.0,), progress=False)


def test_terminals_do_not_bootstrap_but_truncations_do():
    from offline_rl.datasets import OfflineDataset

    # 0 --a0, r=1, terminal--> 1 ;  1 --a0, r=2, time-limit cut--> 1 (keeps bootstrapping).
    # Q(1,0) = 2 / (1 - 0.9) = 20;  Q(0,0) = 1 exactly (a bug bootstrapping would give 19).
    ds = OfflineDataset(
        observations=np.array([0, 1]),
        actions=np.array([0, 0]),
        rewards=np.array([1.0, 2.0], dtype=np.float32),
        next_observations=np.array([1, 1]),
        terminals=np.array([True, False]),
        truncations=np.array([False, True]),
        episode_starts=np.array([0, 1]),
    )
    for alpha in (0.0, 1.0):
        q = offline_q_learning(ds, 2, 1, 0.9, alpha=alpha)
        np.testing.assert_allclose(q[:, 0], [1.0, 20.0], atol=1e-3)
    q_pi = fitted_q_evaluation(ds, np.zeros(2, dtype=np.int64), 2, 1, 0.9)
    np.testing.assert_allclose(q_pi[:, 0], [1.0, 20.0], atol=1e-3)


def _per_transition_q_learning(dataset, n_states, n_actions, gamma, alpha, n_iters):
    """``offline_q_learning`` written per transition: every sweep recomputes each transition's
    target ``r + γ (1 - done) max_a' Q(s', a')`` and averages them per (s, a), O(N) a sweep."""
    s, a, s2 = dataset.observations, dataset.actions, dataset.next_observations
    r, done = dataset.rewards.astype(np.float64), dataset.terminals
    sa = s * n_actions + a
    counts = np.bincount(sa, minlength=n_states * n_actions).reshape(n_states, n_actions) * 1.0
    n_s = counts.sum(axis=1, keepdims=True)
    pi_D = np.divide(counts, n_s, out=np.zeros_like(counts), where=n_s > 0)
    lr = 1.0 / (1.0 + alpha)
    Q = np.zeros((n_states, n_actions))
    for _ in range(n_iters):
        target = r + gamma * (1.0 - done) * Q[s2].max(axis=1)
        sums = np.bincount(sa, weights=target, minlength=counts.size).reshape(counts.shape)
        y = np.divide(sums, counts, out=np.zeros(counts.shape), where=counts > 0)
        soft = np.exp(Q - Q.max(axis=1, keepdims=True))
        soft /= soft.sum(axis=1, keepdims=True)
        grad = pi_D * (Q - y) + alpha * (soft - pi_D)
        Q -= lr * np.where(n_s > 0, grad, 0.0)
    return Q


@pytest.mark.parametrize("alpha", [0.0, 1.0, 5.0])
@pytest.mark.parametrize("layout", ["cliff", "open"])
def test_pooled_sweep_equals_per_transition_sweep(layout, alpha):
    """Pooling the data by (s, a, s') once changes the cost of a sweep, not its result."""
    if layout == "cliff":
        data = narrow_expert_dataset("cliff", n_episodes=20, epsilon=0.1, seed=0)
    else:
        data = quality_dataset("open", 0.5, 40, 0)
    assert data.terminals.any() and not data.terminals.all()  # both kinds of transition
    grid = get_layout(layout)
    S, A = grid.n_states, grid.n_actions
    pooled = offline_q_learning(data, S, A, 0.9, alpha=alpha, n_iters=300)
    plain = _per_transition_q_learning(data, S, A, 0.9, alpha, n_iters=300)
    np.testing.assert_allclose(pooled, plain, rtol=1e-10, atol=1e-10)
