"""Online tabular Q-learning: the agent that may interact freely (Demo 1's contrast)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from offline_rl.envs import GridLayout, get_layout, make_grid_env

__all__ = ["online_q_learning"]


def online_q_learning(
    layout: str | GridLayout,
    n_episodes: int,
    seed: int,
    lr: float = 0.5,
    epsilon: float = 0.1,
    gamma: float | None = None,
    q_init: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Epsilon-greedy Q-learning, ``Q(s,a) += lr (r + γ (1 - done) max_a' Q(s',a') - Q(s,a))``.

    Args:
        layout: layout name or GridLayout.
        n_episodes: episodes of interaction (>= 1).
        seed: seeds exploration (the grid itself is deterministic).
        lr: step size in (0, 1].
        epsilon: probability of a uniformly random action.
        gamma: discount; defaults to ``layout.gamma``.
        q_init: (S, A) starting table (e.g. an offline CQL table); zeros by default.
        progress: show a tqdm bar.

    Returns:
        Q: (S, A) learned table.
        returns: (n_episodes,) undiscounted return of each training episode.
    """
    lay = get_layout(layout)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}.")
    if not 0.0 < lr <= 1.0 or not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"need 0 < lr <= 1 and 0 <= epsilon <= 1, got lr={lr}, epsilon={epsilon}.")
    g = lay.gamma if gamma is None else float(gamma)
    S, A = lay.n_states, lay.n_actions
    if q_init is None:
        Q = np.zeros((S, A))
    else:
        Q = np.array(q_init, dtype=np.float64)
        if Q.shape != (S, A):
            raise ValueError(f"q_init must have shape (S, A) = ({S}, {A}), got {Q.shape}.")
    rng = np.random.default_rng(seed)
    env = make_grid_env(lay)
    returns = np.zeros(n_episodes)
    for ep in tqdm(range(n_episodes), desc="online Q-learning", disable=not progress, leave=False):
        s, _ = env.reset(seed=seed if ep == 0 else None)
        done = False
        while not done:
            a = int(rng.integers(A)) if rng.random() < epsilon else int(np.argmax(Q[s]))
            s2, r, terminated, truncated, _ = env.step(a)
            target = r + (0.0 if terminated else g * Q[s2].max())  # truncation still bootstraps
            Q[s, a] += lr * (target - Q[s, a])
            returns[ep] += r
            s, done = s2, terminated or truncated
    return Q, returns
