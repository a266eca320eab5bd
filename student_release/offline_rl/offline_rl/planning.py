"""Exact dynamic programming on a GridLayout: the ground truth offline agents are judged by.

Values here are infinite-horizon discounted values (the quantity Q-learning estimates); the
layout's ``horizon`` only matters for :func:`rollout_return`, which measures what a greedy
policy actually earns in an episode.
"""

from __future__ import annotations

import numpy as np

from offline_rl.envs import GridLayout, get_layout, transition_model

__all__ = [
    "coords",
    "greedy_policy",
    "policy_evaluation",
    "rollout_return",
    "state_index",
    "value_iteration",
]


def state_index(layout: str | GridLayout, cell: tuple[int, int]) -> int:
    """State index ``row * cols + col`` of a (row, col) cell."""
    return get_layout(layout).state_index(cell)


def coords(layout: str | GridLayout, state: int) -> tuple[int, int]:
    """(row, col) of a state index."""
    return get_layout(layout).coords(state)


def _gamma(layout: GridLayout, gamma: float | None) -> float:
    g = layout.gamma if gamma is None else float(gamma)
    if not 0.0 <= g < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {g}.")
    return g


def value_iteration(
    layout: str | GridLayout,
    gamma: float | None = None,
    tol: float = 1e-10,
    max_iters: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal values by value iteration, ``Q(s,a) = R(s,a) + γ (1 - done) max_a' Q(s',a')``.

    Args:
        layout: layout name or GridLayout.
        gamma: discount; defaults to ``layout.gamma``.

    Returns:
        V: (S,) optimal state values (0 on terminal cells and walls).
        Q: (S, A) optimal action values.
    """
    lay = get_layout(layout)
    g = _gamma(lay, gamma)
    P, R, done = transition_model(lay)
    V = np.zeros(lay.n_states)
    for _ in range(max_iters):
        Q = R + g * np.where(done, 0.0, V[P])  # (S, A)
        V_new = Q.max(axis=1)
        if np.max(np.abs(V_new - V)) < tol:
            V = V_new
            break
        V = V_new
    Q = R + g * np.where(done, 0.0, V[P])
    return Q.max(axis=1), Q


def _check_policy(policy: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    policy = np.asarray(policy)
    if policy.shape != (n_states,) or not np.issubdtype(policy.dtype, np.integer):
        raise ValueError(
            f"policy must be an integer array of shape (S,) = ({n_states},), one action per "
            f"state, got shape {policy.shape} and dtype {policy.dtype}."
        )
    if policy.min() < 0 or policy.max() >= n_actions:
        raise ValueError(f"policy actions must lie in [0, {n_actions}).")
    return policy.astype(np.int64)


def policy_evaluation(
    layout: str | GridLayout, policy: np.ndarray, gamma: float | None = None
) -> np.ndarray:
    """Exact value of a deterministic policy: solve ``(I - γ P_π) V = R_π``.

    Args:
        policy: (S,) int, the action taken in each state.

    Returns:
        V: (S,) discounted value of following ``policy`` forever (a policy stuck against a
        wall with step cost c is worth ``-c / (1 - γ)``).
    """
    lay = get_layout(layout)
    g = _gamma(lay, gamma)
    P, R, done = transition_model(lay)
    S = lay.n_states
    pi = _check_policy(policy, S, lay.n_actions)
    rows = np.arange(S)
    P_pi = np.zeros((S, S))
    P_pi[rows, P[rows, pi]] = np.where(done[rows, pi], 0.0, 1.0)
    return np.linalg.solve(np.eye(S) - g * P_pi, R[rows, pi])


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """``argmax_a q(s, a)`` per state; ties go to the lowest action index (``np.argmax``).

    Args:
        q: (S, A) action values.

    Returns:
        policy: (S,) int64.
    """
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must have shape (S, A), got {q.shape}.")
    return np.argmax(q, axis=1).astype(np.int64)


def rollout_return(
    layout: str | GridLayout,
    policy: np.ndarray,
    start: tuple[int, int] | int | None = None,
    max_steps: int | None = None,
) -> float:
    """Undiscounted return of following ``policy`` from ``start`` (default: the layout's start)
    until a terminal cell or ``max_steps`` (default: the layout's horizon).

    Args:
        policy: (S,) int, action per state.
        start: (row, col) or state index.
    """
    lay = get_layout(layout)
    P, R, done = transition_model(lay)
    pi = _check_policy(policy, lay.n_states, lay.n_actions)
    if start is None:
        s = lay.start_state
    elif isinstance(start, tuple):
        s = lay.state_index(start)
    else:
        s = int(start)
    steps = lay.horizon if max_steps is None else int(max_steps)
    total = 0.0
    for _ in range(steps):
        a = pi[s]
        total += float(R[s, a])
        if done[s, a]:
            break
        s = int(P[s, a])
    return total
