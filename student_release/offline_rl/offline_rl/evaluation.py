"""Offline policy evaluation on tables: fitted Q evaluation (FQE) and importance sampling.

Shipped with the notebook (it is not one of the questions): the offline-policy-selection part
uses it to rank candidate policies, and to compare estimators, without touching the environment.

Policies are given either as an (S,) integer array (deterministic) or as an (S, A) array of
action probabilities ``π(a|s)``. Episodes are laid out as (E, H) tables: episode i, step t.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from offline_rl.datasets import OfflineDataset
from offline_rl.envs import GridLayout, get_layout, transition_model

__all__ = [
    "EpisodeTable",
    "behavior_probs",
    "bootstrap_ope",
    "doubly_robust",
    "episode_table",
    "finite_horizon_value",
    "fitted_q_evaluation",
    "mean_per_pair",
    "ope_estimates",
    "pair_counts",
    "per_decision_is",
    "per_decision_weights",
    "per_decision_wis",
    "policy_probs",
]


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


def policy_probs(policy: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    """π(a|s) as (S, A) from an (S,) integer policy (one-hot) or an (S, A) probability table."""
    pi = np.asarray(policy)
    if pi.shape == (n_states,) and np.issubdtype(pi.dtype, np.integer):
        if pi.min() < 0 or pi.max() >= n_actions:
            raise ValueError(f"policy actions must lie in [0, {n_actions}), got {pi.tolist()}.")
        return np.eye(n_actions)[pi]
    if pi.shape == (n_states, n_actions) and np.issubdtype(pi.dtype, np.floating):
        if np.any(pi < 0) or not np.allclose(pi.sum(axis=1), 1.0):
            raise ValueError("policy probabilities must be >= 0 and sum to 1 in every state.")
        return pi.astype(np.float64)
    raise ValueError(
        f"policy must be an integer array of shape ({n_states},) or a float array of shape "
        f"({n_states}, {n_actions}) of action probabilities, got {pi.shape} {pi.dtype}."
    )


def fitted_q_evaluation(
    dataset: OfflineDataset,
    policy: np.ndarray,
    n_states: int,
    n_actions: int,
    gamma: float,
    n_iters: int = 500,
) -> np.ndarray:
    """Estimate Q^π from the data alone: iterate ``Q(s,a) <- mean of r + γ (1-done) V(s')``,
    ``V(s') = Σ_a' π(a'|s') Q(s', a')``.

    Unseen pairs keep 0 (FQE extrapolates like any offline method). The target is the
    infinite-horizon value: a time-limit cut (a truncation) is bootstrapped through.

    Args:
        dataset: transitions with integer states, shape (N,).
        policy: (S,) int action per state, or (S, A) action probabilities.

    Returns:
        Q: (S, A) estimate of Q^π. The value estimate at s is ``Σ_a π(a|s) Q[s, a]``
        (``Q[s, policy[s]]`` for a deterministic policy).
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}.")
    pi = policy_probs(policy, n_states, n_actions)
    s, a, s2 = dataset.observations, dataset.actions, dataset.next_observations
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError("fitted_q_evaluation needs integer state observations of shape (N,).")
    r, done = dataset.rewards.astype(np.float64), dataset.terminals
    sa = s * n_actions + a
    counts = pair_counts(sa, n_states, n_actions)
    Q = np.zeros((n_states, n_actions))
    for _ in range(n_iters):
        v_next = (pi[s2] * Q[s2]).sum(axis=1)  # (N,) V(s') under π
        Q = mean_per_pair(r + gamma * (1.0 - done) * v_next, sa, counts)
    return Q


def behavior_probs(dataset: OfflineDataset, n_states: int, n_actions: int) -> np.ndarray:
    """π̂_β(a|s) = n(s, a) / n(s), the data's action frequencies, (S, A); uniform where n(s) = 0.

    This is the right propensity only when the data come from a *Markov* policy (the action
    depends on the state alone). A mixture of whole scripted episodes is not one.
    """
    sa = dataset.observations * n_actions + dataset.actions
    counts = pair_counts(sa, n_states, n_actions)
    n_s = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, n_s, out=np.full(counts.shape, 1.0 / n_actions), where=n_s > 0)


class EpisodeTable(NamedTuple):
    """The dataset's episodes as (E, H) tables, H the longest episode; ``mask`` marks real steps."""

    states: np.ndarray
    """(E, H) int64 s_t (0 after the episode's end)."""
    actions: np.ndarray
    """(E, H) int64 a_t."""
    rewards: np.ndarray
    """(E, H) float64 r_t (0 after the end)."""
    mask: np.ndarray
    """(E, H) bool, True for the steps the episode has."""


def episode_table(dataset: OfflineDataset) -> EpisodeTable:
    """Lay the dataset's episodes out as (E, H) tables (see :class:`EpisodeTable`)."""
    slices = dataset.episode_slices()
    H = max(sl.stop - sl.start for sl in slices)
    E = len(slices)
    states, actions = np.zeros((E, H), dtype=np.int64), np.zeros((E, H), dtype=np.int64)
    rewards, mask = np.zeros((E, H)), np.zeros((E, H), dtype=bool)
    for i, sl in enumerate(slices):
        n = sl.stop - sl.start
        states[i, :n], actions[i, :n] = dataset.observations[sl], dataset.actions[sl]
        rewards[i, :n], mask[i, :n] = dataset.rewards[sl], True
    return EpisodeTable(states, actions, rewards, mask)


def per_decision_weights(ep: EpisodeTable, pi: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """ρ_{i,t} = Π_{k ≤ t} π(a_k|s_k) / π_β(a_k|s_k), (E, H).

    After an episode's end the weight stays at its last value: the episode sits in an absorbing
    state with reward 0, and still counts in a weighted estimator's normaliser.

    Args:
        pi, beta: (S, A) target and behavior action probabilities (β > 0 on the data's pairs).
    """
    ratio = pi[ep.states, ep.actions] / np.where(ep.mask, beta[ep.states, ep.actions], 1.0)
    return np.cumprod(np.where(ep.mask, ratio, 1.0), axis=1)


def _discounts(horizon: int, gamma: float) -> np.ndarray:
    """(H,) γ^t."""
    return gamma ** np.arange(horizon)


def per_decision_is(ep: EpisodeTable, rho: np.ndarray, gamma: float) -> float:
    """Per-decision importance sampling: ``(1/E) Σ_i Σ_t γ^t ρ_{i,t} r_{i,t}`` (unbiased)."""
    return float((rho * ep.rewards).sum(axis=0) @ _discounts(rho.shape[1], gamma) / rho.shape[0])


def per_decision_wis(ep: EpisodeTable, rho: np.ndarray, gamma: float) -> float:
    """Per-decision weighted IS: ``Σ_t γ^t Σ_i ρ_{i,t} r_{i,t} / Σ_i ρ_{i,t}``.

    Each step's weights are normalised to sum to 1 over the episodes (biased, but the weights
    can no longer blow the estimate up); a step no episode reaches with weight > 0 adds 0.
    """
    total = rho.sum(axis=0)  # (H,)
    step_mean = np.divide((rho * ep.rewards).sum(axis=0), total, out=np.zeros_like(total),
                          where=total > 0)  # fmt: skip
    return float(step_mean @ _discounts(rho.shape[1], gamma))


def doubly_robust(
    ep: EpisodeTable, rho: np.ndarray, q_hat: np.ndarray, pi: np.ndarray, gamma: float
) -> float:
    """Per-decision doubly robust estimate (Jiang and Li, 2016) with a model ``q_hat`` (S, A):

    ``(1/E) Σ_i Σ_t γ^t [ρ_{i,t} (r_{i,t} - Q̂(s_{i,t}, a_{i,t})) + ρ_{i,t-1} V̂(s_{i,t})]``,
    ``ρ_{i,-1} = 1``, ``V̂(s) = Σ_a π(a|s) Q̂(s, a)``. IS corrects the model's errors; the model
    takes the variance out of IS. Unbiased if either the weights or the model are right.
    """
    v_hat = (pi * q_hat).sum(axis=1)  # (S,)
    rho_prev = np.concatenate([np.ones((rho.shape[0], 1)), rho[:, :-1]], axis=1)  # ρ_{t-1}
    terms = rho * (ep.rewards - q_hat[ep.states, ep.actions]) + rho_prev * v_hat[ep.states]
    terms = np.where(ep.mask, terms, 0.0)
    return float(terms.sum(axis=0) @ _discounts(rho.shape[1], gamma) / rho.shape[0])


def finite_horizon_value(
    layout: str | GridLayout, policy: np.ndarray, horizon: int | None = None
) -> np.ndarray:
    """Exact V^π (S,) of the first ``horizon`` steps (the layout's time limit by default),
    discounted: what the logged, time-limited episodes measure."""
    lay = get_layout(layout)
    P, R, done = transition_model(lay)
    pi = policy_probs(policy, lay.n_states, lay.n_actions)
    V = np.zeros(lay.n_states)
    for _ in range(lay.horizon if horizon is None else horizon):
        V = (pi * (R + lay.gamma * np.where(done, 0.0, V[P]))).sum(axis=1)
    return V


def ope_estimates(
    dataset: OfflineDataset, layout: str | GridLayout, pi: np.ndarray, fqe_iters: int = 200
) -> dict[str, float]:
    """FQE, per-decision IS, per-decision WIS and doubly robust estimates of π's value at the
    start state, with π̂_β and FQE's Q̂ estimated on ``dataset`` alone.

    Args:
        pi: (S, A) target action probabilities (see :func:`policy_probs`).
        fqe_iters: FQE sweeps; γ^200 < 1e-9 at the grids' γ = 0.9.

    Returns:
        {"fqe", "pdis", "pdwis", "dr"}: one estimate each.
    """
    lay = get_layout(layout)
    ep = episode_table(dataset)
    rho = per_decision_weights(ep, pi, behavior_probs(dataset, lay.n_states, lay.n_actions))
    S, A = lay.n_states, lay.n_actions
    q_hat = fitted_q_evaluation(dataset, pi, S, A, lay.gamma, n_iters=fqe_iters)
    return {
        "fqe": float(pi[lay.start_state] @ q_hat[lay.start_state]),
        "pdis": per_decision_is(ep, rho, lay.gamma),
        "pdwis": per_decision_wis(ep, rho, lay.gamma),
        "dr": doubly_robust(ep, rho, q_hat, pi, lay.gamma),
    }


def bootstrap_ope(
    dataset: OfflineDataset,
    layout: str | GridLayout,
    policy: np.ndarray,
    n_boot: int = 20,
    seed: int = 0,
    fqe_iters: int = 200,
) -> dict[str, np.ndarray]:
    """FQE, per-decision IS, per-decision WIS and doubly robust estimates of π's value at the
    start state, on ``n_boot`` bootstrap resamples of the dataset's episodes.

    Each resample draws E episodes with replacement; the behavior probabilities π̂_β and FQE's
    Q̂ are re-estimated on it, as they would be on a new dataset of the same size.

    Args:
        fqe_iters: FQE sweeps; γ^200 < 1e-9 at the grids' γ = 0.9.

    Returns:
        {"fqe", "pdis", "pdwis", "dr"}: (n_boot,) estimates, and "true": the exact value of the
        first ``layout.horizon`` steps (which no real application sees).
    """
    lay = get_layout(layout)
    pi = policy_probs(policy, lay.n_states, lay.n_actions)
    slices = dataset.episode_slices()
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"fqe": [], "pdis": [], "pdwis": [], "dr": []}
    for _ in range(n_boot):
        picks = rng.integers(0, len(slices), size=len(slices))
        index = np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in picks])
        lengths = [slices[i].stop - slices[i].start for i in picks]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        data = dataset.select(index, episode_starts=starts)
        for key, value in ope_estimates(data, lay, pi, fqe_iters).items():
            out[key].append(value)
    result = {k: np.array(v) for k, v in out.items()}
    result["true"] = np.array(finite_horizon_value(lay, pi)[lay.start_state])
    return result
