"""Ground-truth planning, behavior data and input validation."""

import numpy as np
import pytest
from offline_rl.algorithms.coverage import bc_policy_from_counts, coverage_counts, ood_fraction
from offline_rl.behavior import (
    expert_policy,
    narrow_expert_dataset,
    quality_dataset,
    stitching_dataset,
)
from offline_rl.datasets import OfflineDataset, load_dataset, save_dataset
from offline_rl.envs import GridLayout, get_layout
from offline_rl.planning import (
    greedy_policy,
    policy_evaluation,
    rollout_return,
    value_iteration,
)

CORRIDOR = GridLayout("corridor", rows=1, cols=3, start=(0, 0), goals={(0, 2): 10.0}, gamma=0.9)


def test_value_iteration_matches_hand_solution():
    # 1x3 corridor  [s0][s1][G], step -1, goal +10, γ = 0.9, by hand:
    #   Q(s1, right) = 10                      (enter G, no bootstrap)
    #   V(s1) = 10;  Q(s1, left) = -1 + 0.9 * V(s0)
    #   Q(s0, right) = -1 + 0.9 * 10 = 8 = V(s0)
    #   Q(s0, left) = Q(s0, up) = Q(s0, down) = -1 + 0.9 * 8 = 6.2   (bump, stay)
    #   Q(s1, left) = -1 + 0.9 * 8 = 6.2;  Q(s1, up/down) = -1 + 0.9 * 10 = 8
    V, Q = value_iteration(CORRIDOR)
    np.testing.assert_allclose(V, [8.0, 10.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(Q[0], [6.2, 8.0, 6.2, 6.2], atol=1e-8)
    np.testing.assert_allclose(Q[1], [8.0, 10.0, 8.0, 6.2], atol=1e-8)
    assert np.all(Q[2] == 0)


def test_policy_evaluation_and_greedy_consistency():
    V, Q = value_iteration("stitch")
    pi = greedy_policy(Q)
    np.testing.assert_allclose(policy_evaluation("stitch", pi), V, atol=1e-8)
    stuck = np.full(25, 2)  # always "down": the start bumps the edge forever
    assert policy_evaluation("stitch", stuck)[20] == pytest.approx(-1 / (1 - 0.9))
    assert rollout_return("stitch", stuck) == -20.0  # 20 steps of -1 until the horizon
    assert greedy_policy(np.array([[1.0, 1.0, 0.0, 1.0]]))[0] == 0  # ties: lowest index


def test_bc_recovers_expert_on_visited_states():
    for name in ("open", "cliff", "stitch"):
        lay = get_layout(name)
        ds = quality_dataset(name, 1.0, 5, seed=0)
        counts = coverage_counts(ds, lay.n_states, lay.n_actions)
        visited = counts.sum(axis=1) > 0
        pi_star = greedy_policy(value_iteration(lay)[1])
        np.testing.assert_array_equal(bc_policy_from_counts(counts)[visited], pi_star[visited])
        assert ood_fraction(counts, pi_star) == 0.0


def test_stitching_dataset_is_the_design():
    ds = stitching_dataset()
    returns = ds.episode_returns()
    np.testing.assert_array_equal(returns, [-17] * 6 + [1] * 4)
    counts = coverage_counts(ds, 25, 4)
    # S=(4,0) is state 20, M=(2,2) state 12: up 6 times, right 4 times at both.
    np.testing.assert_array_equal(counts[20], [6, 4, 0, 0])
    np.testing.assert_array_equal(counts[12], [6, 4, 0, 0])
    # the two families share no other state
    shared = (counts > 0).sum(axis=1) > 1
    assert set(np.flatnonzero(shared)) == {12, 20}


def test_quality_dataset_fixed_fraction():
    ds = quality_dataset("open", 0.3, 10, seed=0)
    returns = ds.episode_returns()
    assert ds.n_episodes == 10
    np.testing.assert_array_equal(returns[:3], [1.0] * 3)  # round(0.3 * 10) = 3 expert episodes
    assert quality_dataset("open", 0.25, 2, seed=0).episode_returns()[0] == 1.0  # half up


def test_same_seed_same_data_different_seed_different_data():
    a = quality_dataset("open", 0.0, 5, seed=1)
    b = quality_dataset("open", 0.0, 5, seed=1)
    c = quality_dataset("open", 0.0, 5, seed=2)
    for name, arr in a.as_dict().items():
        np.testing.assert_array_equal(arr, b.as_dict()[name])
    assert len(a) != len(c) or not np.array_equal(a.actions, c.actions)
    n1 = narrow_expert_dataset("cliff", 10, 0.3, seed=4)
    n2 = narrow_expert_dataset("cliff", 10, 0.3, seed=4)
    np.testing.assert_array_equal(n1.actions, n2.actions)


def test_expert_policy_is_optimal_in_rollout():
    for name, optimal in (("stitch", 3.0), ("cliff", 2.0), ("open", 1.0)):
        lay = get_layout(name)
        act, rng = expert_policy(lay), np.random.default_rng(0)
        pi = np.array([act(s, rng) for s in range(lay.n_states)])
        assert rollout_return(lay, pi) == optimal


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="quality"):
        quality_dataset("open", 1.5, 10, seed=0)
    with pytest.raises(ValueError, match="n_episodes"):
        quality_dataset("open", 0.5, 0, seed=0)
    with pytest.raises(ValueError, match="Unknown layout"):
        quality_dataset("nope", 0.5, 3, seed=0)
    with pytest.raises(ValueError, match="Unknown layout"):
        narrow_expert_dataset("nope")
    with pytest.raises(ValueError, match=r"\(S, A\)"):
        bc_policy_from_counts(np.zeros(5))
    with pytest.raises(ValueError, match="policy"):
        ood_fraction(np.ones((4, 4)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="policy"):
        policy_evaluation("open", np.zeros(5, dtype=int))
    ds = stitching_dataset()
    with pytest.raises(ValueError, match="n_states"):
        coverage_counts(ds, 10, 4)
    fields = ds.as_dict()
    fields["rewards"] = fields["rewards"].copy()
    fields["rewards"][3] = np.nan
    with pytest.raises(ValueError, match=r"rewards.*NaN"):
        OfflineDataset(**fields)
    garbage = tmp_path / "broken.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match="not a readable"):
        load_dataset(garbage)
    path = save_dataset(ds, tmp_path / "ok.npz")
    np.testing.assert_array_equal(load_dataset(path).actions, ds.actions)
