"""Offline policy evaluation on tables: fitted Q evaluation (FQE).

Shipped with the notebook (it is not one of the questions): the offline-policy-selection part
uses it to rank candidate policies without touching the environment.
"""

from __future__ import annotations

import numpy as np

from offline_rl.datasets import OfflineDataset

__all__ = ["fitted_q_evaluation", "mean_per_pair", "pair_counts"]


def pair_counts(sa: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    """n(s, a) as float (S, A) from the flat pair index ``sa = s * A + a`` of each transition."""
    return np.bincount(sa, minlength=n_states * n_actions).reshape(n_states, n_actions) * 1.0


def mean_per_pair(values: np.ndarray, sa: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ``values`` (N,) over the transitions of each (s, a); 0 where counts == 0.

    Args:
        sa: (N,) flat index ``s * A + a`` of each transition.
        counts: (S, A) number of transitions per pair.
    """
    sums = np.bincount(sa, weights=values, minlength=counts.size).reshape(counts.shape)
    return np.divide(sums, counts, out=np.zeros(counts.shape), where=counts > 0)


def fitted_q_evaluation(
    dataset: OfflineDataset,
    policy: np.ndarray,
    n_states: int,
    n_actions: int,
    gamma: float,
    n_iters: int = 500,
) -> np.ndarray:
    """Estimate Q^π from the data alone: iterate ``Q(s,a) <- mean of r + γ (1-done) Q(s', π(s'))``.

    Unseen pairs keep 0 (FQE extrapolates like any offline method).

    Args:
        dataset: transitions with integer states, shape (N,).
        policy: (S,) int action per state.

    Returns:
        Q: (S, A) estimate of Q^π. The value estimate at s is ``Q[s, policy[s]]``.
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}.")
    pi = np.asarray(policy)
    if pi.shape != (n_states,) or not np.issubdtype(pi.dtype, np.integer):
        raise ValueError(f"policy must be an integer array of shape ({n_states},), got {pi.shape}.")
    s, a, s2 = dataset.observations, dataset.actions, dataset.next_observations
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError("fitted_q_evaluation needs integer state observations of shape (N,).")
    r, done = dataset.rewards.astype(np.float64), dataset.terminals
    sa = s * n_actions + a
    counts = pair_counts(sa, n_states, n_actions)
    Q = np.zeros((n_states, n_actions))
    for _ in range(n_iters):
        target = r + gamma * (1.0 - done) * Q[s2, pi[s2]]  # (N,)
        Q = mean_per_pair(target, sa, counts)
    return Q
