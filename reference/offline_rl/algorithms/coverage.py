"""Dataset coverage: which (state, action) pairs the data has seen, and count-based BC."""

from __future__ import annotations

import numpy as np

from offline_rl.datasets import OfflineDataset

__all__ = ["bc_policy_from_counts", "coverage_counts", "ood_fraction"]


def _check_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must have shape (S, A), got {counts.shape}.")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative visit counts.")
    return counts


def coverage_counts(dataset: OfflineDataset, n_states: int, n_actions: int) -> np.ndarray:
    """How often each (s, a) pair occurs in the dataset: ``n(s, a)``.

    Args:
        dataset: a dataset whose observations are integer state indices, shape (N,).

    Returns:
        counts: (S, A) int64.
    """
    s, a = dataset.observations, dataset.actions
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(
            f"coverage_counts needs integer state observations of shape (N,), got shape "
            f"{s.shape} and dtype {s.dtype}; collect the data with obs_mode='index'."
        )
    if len(dataset) and (s.max() >= n_states or a.max() >= n_actions):
        raise ValueError(
            f"dataset has states up to {s.max()} and actions up to {a.max()}, which do not fit "
            f"n_states={n_states}, n_actions={n_actions}."
        )
    flat = np.bincount(s * n_actions + a, minlength=n_states * n_actions)
    return flat.reshape(n_states, n_actions).astype(np.int64)


def ood_fraction(counts: np.ndarray, policy: np.ndarray) -> float:
    """Fraction of dataset states (any count > 0) where ``policy``'s action was never taken.

    Args:
        counts: (S, A) visit counts.
        policy: (S,) int action per state.
    """
    counts = _check_counts(counts)
    policy = np.asarray(policy)
    if policy.shape != (counts.shape[0],):
        raise ValueError(f"policy must have shape ({counts.shape[0]},), got {policy.shape}.")
    visited = counts.sum(axis=1) > 0  # (S,)
    if not visited.any():
        raise ValueError("counts are all zero: the dataset visits no state.")
    chosen = counts[np.arange(counts.shape[0]), policy]  # (S,)
    return float(np.mean(chosen[visited] == 0))


def bc_policy_from_counts(counts: np.ndarray) -> np.ndarray:
    """Count-based behavior cloning: ``π(s) = argmax_a n(s, a)``.

    This is the maximum-likelihood policy ``argmax log π(a|s)`` with ``π(a|s) = n(s,a)/n(s)``.
    Ties go to the lowest action index; states the data never visits get action 0.

    Returns:
        policy: (S,) int64.
    """
    counts = _check_counts(counts)
    return np.argmax(counts, axis=1).astype(np.int64)
