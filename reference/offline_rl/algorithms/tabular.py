"""Tabular offline Q-learning, CQL and BCQ's action filter (numpy).

``fitted_q_evaluation`` (re-exported here) lives in the shipped :mod:`offline_rl.evaluation`.

All learners only ever read the dataset: no environment, no model of unseen transitions.

CQL objective (per state, the tabular form of the chapter's equations 4-5)::

    L(Q) = E_{s~D}[ 1/2 E_{a~π_D(.|s)} (Q(s,a) - y(s,a))^2
                    + α (logsumexp_a Q(s,a) - E_{a~π_D(.|s)} Q(s,a)) ]

with ``y(s,a) = mean over the data's transitions (s,a,r,s') of r + γ (1 - done) max_a' Q(s',a')``
and ``π_D(a|s) = n(s,a) / n(s)``. Its gradient in Q(s,a) is::

    π_D(a|s) (Q(s,a) - y(s,a))  +  α (softmax(Q(s))_a - π_D(a|s))

which we descend (the target y held fixed, as in the neural version's detached target).
Each state's gradient is divided by its visit frequency, a per-state step size that leaves the
fixed point unchanged and lets rarely visited states learn as fast as common ones.
With α = 0 this is naive offline Q-learning: an unseen pair has π_D = 0, gets no update and
keeps its initial value 0.
"""

from __future__ import annotations

import numpy as np

from offline_rl.datasets import OfflineDataset
from offline_rl.evaluation import fitted_q_evaluation, mean_per_pair, pair_counts

__all__ = [  # plus Q11_ALPHA_STAR, computed on first read (module __getattr__ below)
    "cql_switch_alpha",
    "data_action_values",
    "discrete_bcq_policy",
    "fitted_q_evaluation",
    "naive_offline_q",
    "offline_q_learning",
    "softmax",
    "tabular_cql",
]


def softmax(q: np.ndarray) -> np.ndarray:
    """Row-wise softmax, ``exp(q(s,a)) / sum_a' exp(q(s,a'))`` (the gradient of logsumexp).

    Args:
        q: (S, A). Returns (S, A).
    """
    z = q - q.max(axis=1, keepdims=True)  # shift for numerical stability
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _transitions(dataset: OfflineDataset, n_states: int, n_actions: int) -> tuple[np.ndarray, ...]:
    """(s, a, r, s', done) as arrays, checking that states are integer indices in range."""
    s, s2 = dataset.observations, dataset.next_observations
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(
            f"tabular learners need integer state observations of shape (N,), got shape "
            f"{s.shape} and dtype {s.dtype}; collect the data with obs_mode='index'."
        )
    if len(dataset) == 0:
        raise ValueError("the dataset is empty.")
    if max(s.max(), s2.max()) >= n_states or dataset.actions.max() >= n_actions:
        raise ValueError(
            f"dataset states/actions exceed n_states={n_states}, n_actions={n_actions}."
        )
    return s, dataset.actions, dataset.rewards.astype(np.float64), s2, dataset.terminals


def _pooled_model(
    sa: np.ndarray,
    r: np.ndarray,
    s2: np.ndarray,
    done: np.ndarray,
    counts: np.ndarray,
    n_states: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The data pooled by (s, a, s'), once, so that a sweep costs O(S·A·S'), not O(N).

    Returns:
        r_mean: (S, A) mean reward of the transitions from (s, a), ``r̄(s, a)``.
        p_next: (S·A, S) ``P̂(s' | s, a)`` restricted to non-terminal transitions: the fraction
            of the (s, a) transitions that reach s' and bootstrap (``done == 0``).

    So the mean of ``r + γ (1 - done) max_a' Q(s', a')`` over the (s, a) transitions is
    ``r_mean + γ p_next @ max_a' Q(·, a')``; unseen pairs get 0, like ``mean_per_pair``.
    """
    r_mean = mean_per_pair(r, sa, counts)  # (S, A)
    bootstraps = np.bincount(
        sa * n_states + s2, weights=1.0 - done, minlength=counts.size * n_states
    ).reshape(counts.size, n_states)  # number of non-terminal (s, a) -> s' transitions
    n_sa = counts.reshape(-1, 1)  # (S·A, 1)
    p_next = np.divide(bootstraps, n_sa, out=np.zeros_like(bootstraps), where=n_sa > 0)
    return r_mean, p_next


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}.")


def offline_q_learning(
    dataset: OfflineDataset,
    n_states: int,
    n_actions: int,
    gamma: float,
    alpha: float = 0.0,
    n_iters: int = 5_000,
    lr: float | None = None,
) -> np.ndarray:
    """Batch Q-learning on the dataset's transitions, with a CQL penalty of weight ``alpha``.

    Args:
        dataset: transitions with integer states.
        n_states, n_actions: table size S, A.
        gamma: discount in [0, 1).
        alpha: CQL weight α >= 0; 0 gives naive offline Q-learning.
        n_iters: gradient steps on the whole table.
        lr: step size; default ``1 / (1 + α)`` (stable: the per-state curvature is at most
            ``1 + α/2``).

    Returns:
        Q: (S, A). Pairs never seen start at 0 and move only through the CQL penalty.
    """
    _check_gamma(gamma)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    s, a, r, s2, done = _transitions(dataset, n_states, n_actions)
    lr = 1.0 / (1.0 + alpha) if lr is None else float(lr)

    sa = s * n_actions + a  # flat index of each transition's (s, a)
    counts = pair_counts(sa, n_states, n_actions)  # n(s, a): (S, A)
    n_s = counts.sum(axis=1, keepdims=True)  # n(s): (S, 1)
    visited = n_s > 0  # (S, 1)
    pi_D = np.divide(counts, n_s, out=np.zeros_like(counts), where=visited)  # π_D(a|s): (S, A)
    r_mean, p_next = _pooled_model(sa, r, s2, done, counts, n_states)

    Q = np.zeros((n_states, n_actions))
    for _ in range(n_iters):
        # Bellman targets y(s, a) = mean over the (s, a) transitions of r + γ (1 - done) max Q(s'),
        # pooled: r̄(s, a) + γ Σ_s' P̂(s' | s, a) max_a' Q(s', a').
        y = r_mean + gamma * (p_next @ Q.max(axis=1)).reshape(n_states, n_actions)  # (S, A)

        bellman_grad = pi_D * (Q - y)  # zero on unseen pairs
        cql_grad = alpha * (softmax(Q) - pi_D)  # push all actions down, data actions up
        Q_next = Q - lr * np.where(visited, bellman_grad + cql_grad, 0.0)
        if alpha == 0 and np.array_equal(Q_next, Q):
            # An exact fixed point (α = 0 reaches one within a few hundred sweeps on the
            # chapter's data): every later sweep would return this same table.
            break
        Q = Q_next
    return Q


def naive_offline_q(
    dataset: OfflineDataset, n_states: int, n_actions: int, gamma: float, n_iters: int = 5_000
) -> np.ndarray:
    """Offline Q-learning with no penalty (α = 0). Returns Q: (S, A)."""
    return offline_q_learning(dataset, n_states, n_actions, gamma, alpha=0.0, n_iters=n_iters)


def tabular_cql(
    dataset: OfflineDataset,
    n_states: int,
    n_actions: int,
    gamma: float,
    alpha: float = 1.0,
    n_iters: int = 5_000,
) -> np.ndarray:
    """Conservative Q-learning (α > 0). Returns Q: (S, A)."""
    if alpha <= 0:
        raise ValueError(f"tabular_cql needs alpha > 0, got {alpha}; use naive_offline_q.")
    return offline_q_learning(dataset, n_states, n_actions, gamma, alpha=alpha, n_iters=n_iters)


def discrete_bcq_policy(q: np.ndarray, counts: np.ndarray, threshold: float) -> np.ndarray:
    """BCQ's action filter: greedy in ``q`` among actions the data makes likely enough.

    An action is allowed in state s when ``n(s,a) / max_a' n(s,a') >= threshold``. States
    the data never visits allow every action (greedy in q there).

    Args:
        q: (S, A) action values.
        counts: (S, A) visit counts.
        threshold: in [0, 1]; 0 = plain greedy, 1 = only the most frequent action(s).

    Returns:
        policy: (S,) int64, ties to the lowest index.
    """
    q, counts = np.asarray(q, dtype=np.float64), np.asarray(counts)
    if q.ndim != 2 or counts.shape != q.shape:
        raise ValueError(
            f"q and counts must both have shape (S, A), got {q.shape} and {counts.shape}."
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    top = counts.max(axis=1, keepdims=True)  # (S, 1)
    ratio = np.divide(counts, top, out=np.ones(q.shape), where=top > 0)  # (S, A)
    allowed = ratio >= threshold
    return np.argmax(np.where(allowed, q, -np.inf), axis=1).astype(np.int64)


def data_action_values(
    dataset: OfflineDataset, n_states: int, n_actions: int, gamma: float, n_iters: int = 500
) -> np.ndarray:
    """Bellman values of the data's own actions, the max taken over the data's actions only:
    ``y(s,a) = r̄(s,a) + γ Σ_s' P̂(s'|s,a) max_{a' : n(s',a') > 0} y(s',a')``.

    These are CQL(H)'s Bellman targets once the unseen actions' values have been pushed far
    down (they then never win the max), at states after which the data take one action each.

    Returns:
        y: (S, A); ``-inf`` on pairs the data never contain (0 in states the data never visit).
    """
    _check_gamma(gamma)
    s, a, r, s2, done = _transitions(dataset, n_states, n_actions)
    sa = s * n_actions + a
    counts = pair_counts(sa, n_states, n_actions)
    r_mean, p_next = _pooled_model(sa, r, s2, done, counts, n_states)
    seen = counts > 0
    y = np.zeros((n_states, n_actions))
    for _ in range(n_iters):
        v = np.where(seen.any(axis=1), np.where(seen, y, -np.inf).max(axis=1), 0.0)  # (S,)
        y = r_mean + gamma * (p_next @ v).reshape(n_states, n_actions)
    return np.where(seen, y, -np.inf)


def cql_switch_alpha(
    dataset: OfflineDataset | None = None, layout: str = "stitch", cell: tuple[int, int] = (2, 2)
) -> float:
    """α* at which tabular CQL(H)'s greedy action in ``cell`` switches between its two data
    actions (Question 11: the stitching data's cell M by default).

    At the fixed point of a seen pair, ``Q_a = y_a - α (σ_a / π̂_β(a) - 1)`` with σ the soft-max
    of Q in the cell. The greedy choice switches where the two Q-values are equal, so their
    soft-max weights are equal, σ = 1/2 each (the unseen actions' weight has gone to 0). Then
    ``y_hi - y_lo = α (1/2) (1/π̂_β(hi) - 1/π̂_β(lo))``, with ``hi`` the action of larger target.
    """
    from offline_rl.behavior import stitching_dataset
    from offline_rl.envs import get_layout

    data = stitching_dataset() if dataset is None else dataset
    lay = get_layout(layout)
    S, A = lay.n_states, lay.n_actions
    state = lay.state_index(cell)
    counts = pair_counts(data.observations * A + data.actions, S, A)[state]
    seen = np.flatnonzero(counts)
    if seen.size != 2:
        raise ValueError(f"cell {cell} must have exactly two data actions, has {seen.tolist()}.")
    y = data_action_values(data, S, A, lay.gamma)[state, seen]
    p = counts[seen] / counts.sum()
    hi, lo = (1, 0) if y[1] > y[0] else (0, 1)
    if p[hi] >= p[lo]:
        raise ValueError("the better action is also the more frequent one: CQL never switches.")
    return float((y[hi] - y[lo]) / (0.5 * (1.0 / p[hi] - 1.0 / p[lo])))


def __getattr__(name: str) -> float:
    """``Q11_ALPHA_STAR``: :func:`cql_switch_alpha` on the chapter's stitching data, computed
    when first read (Question 11's answer key: the build reads it, nobody types it)."""
    if name == "Q11_ALPHA_STAR":
        return cql_switch_alpha()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
