"""Behavior policies and the chapter's GridWorld datasets.

Every dataset here is collected by really stepping a :class:`~offline_rl.envs.GridWorldEnv`
with :func:`offline_rl.datasets.collect_dataset`, so transitions always agree with the
environment. Observations are integer state indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from offline_rl.datasets import OfflineDataset, Policy, collect_dataset, concatenate
from offline_rl.envs import N_ACTIONS, GridLayout, get_layout, make_grid_env
from offline_rl.planning import greedy_policy, value_iteration

__all__ = [
    "FAMILY_A",
    "FAMILY_B",
    "expert_policy",
    "narrow_expert_dataset",
    "noisy_expert_policy",
    "quality_dataset",
    "random_policy",
    "scripted_policy",
    "stitching_dataset",
]

# Scripted trajectories of the "stitch" layout as {(row, col): action}; 0 up, 1 right, 2 down,
# 3 left. Both start at S=(4,0) and pass M=(2,2); they share no other state.
#: S↑↑→→ M ↑↑←← pit: 7 steps of -1 then -10, return -17.
FAMILY_A: dict[tuple[int, int], int] = {
    (4, 0): 0, (3, 0): 0, (2, 0): 1, (2, 1): 1,
    (2, 2): 0, (1, 2): 0, (0, 2): 3, (0, 1): 3,
}  # fmt: skip
#: S→→→↑←↑ M →→↑↑ goal: 9 steps of -1 then +10, return +1.
FAMILY_B: dict[tuple[int, int], int] = {
    (4, 0): 1, (4, 1): 1, (4, 2): 1, (4, 3): 0, (3, 3): 3, (3, 2): 0,
    (2, 2): 1, (2, 3): 1, (2, 4): 0, (1, 4): 0,
}  # fmt: skip


def _check_episodes(n_episodes: int) -> None:
    if int(n_episodes) < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}.")


def random_policy(n_actions: int = N_ACTIONS) -> Policy:
    """Uniformly random actions."""

    def act(obs: Any, rng: np.random.Generator) -> int:
        return int(rng.integers(n_actions))

    return act


def expert_policy(layout: str | GridLayout) -> Policy:
    """The optimal deterministic policy (greedy in Q* from value iteration)."""
    return noisy_expert_policy(layout, epsilon=0.0)


def noisy_expert_policy(layout: str | GridLayout, epsilon: float) -> Policy:
    """The expert, except that with probability ``epsilon`` it takes a uniformly random action."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
    _, q_star = value_iteration(layout)
    pi_star = greedy_policy(q_star)

    def act(obs: Any, rng: np.random.Generator) -> int:
        if epsilon > 0.0 and rng.random() < epsilon:
            return int(rng.integers(N_ACTIONS))
        return int(pi_star[int(obs)])

    return act


def scripted_policy(layout: str | GridLayout, script: dict[tuple[int, int], int]) -> Policy:
    """Follow ``script`` ({(row, col): action}); a state missing from it is an error."""
    lay = get_layout(layout)

    def act(obs: Any, rng: np.random.Generator) -> int:
        cell = lay.coords(int(obs))
        if cell not in script:
            raise ValueError(f"The script has no action for cell {cell}.")
        return script[cell]

    return act


def quality_dataset(
    layout_name: str, quality: float, n_episodes: int, seed: int, progress: bool = False
) -> OfflineDataset:
    """A mix of expert and uniformly random episodes.

    Exactly ``n_expert = floor(quality * n_episodes + 0.5)`` episodes (round half up) come from
    the expert and the other ``n_episodes - n_expert`` from the random policy, expert episodes
    first. The expert part uses ``seed``, the random part ``seed + 1``.

    Args:
        layout_name: a name from ``LAYOUTS``.
        quality: in [0, 1]; 1 is all expert, 0 all random.
        n_episodes: total number of episodes (>= 1).
        seed: makes the dataset reproducible.
    """
    lay = get_layout(layout_name)
    if not 0.0 <= float(quality) <= 1.0 or np.isnan(quality):
        raise ValueError(f"quality must be in [0, 1] (1 = all expert), got {quality}.")
    _check_episodes(n_episodes)
    n_expert = int(np.floor(quality * n_episodes + 0.5))
    parts = []
    if n_expert > 0:
        parts.append(
            collect_dataset(make_grid_env(lay), expert_policy(lay), n_expert, seed,
                            progress=progress, desc="expert episodes")
        )  # fmt: skip
    if n_episodes - n_expert > 0:
        parts.append(
            collect_dataset(make_grid_env(lay), random_policy(), n_episodes - n_expert, seed + 1,
                            progress=progress, desc="random episodes")
        )  # fmt: skip
    return concatenate(parts)


def stitching_dataset(n_family_a: int = 6, n_family_b: int = 4) -> OfflineDataset:
    """The "stitch" dataset: ``n_family_a`` copies of FAMILY_A then ``n_family_b`` of FAMILY_B.

    No trajectory reaches the goal quickly (best return +1), but the first half of A and the
    second half of B join at M=(2,2) into the optimal path (return +3).
    """
    if n_family_a < 1 or n_family_b < 1:
        raise ValueError("stitching_dataset needs at least one episode of each family.")
    env = make_grid_env("stitch")
    a = collect_dataset(env, scripted_policy("stitch", FAMILY_A), n_family_a, 0, progress=False)
    b = collect_dataset(env, scripted_policy("stitch", FAMILY_B), n_family_b, 0, progress=False)
    return concatenate([a, b])


def narrow_expert_dataset(
    layout_name: str = "cliff", n_episodes: int = 20, epsilon: float = 0.0, seed: int = 0,
    progress: bool = False,
) -> OfflineDataset:  # fmt: skip
    """Episodes of the (optionally ``epsilon``-noisy) expert: high quality, narrow coverage.

    On "cliff" with ``epsilon=0`` every episode walks the bridge, so the dataset holds only
    the action "right" on the bridge and never the catastrophic "up"/"down".
    """
    lay = get_layout(layout_name)
    _check_episodes(n_episodes)
    policy = noisy_expert_policy(lay, epsilon)
    return collect_dataset(make_grid_env(lay), policy, n_episodes, seed, progress=progress,
                           desc="expert episodes")  # fmt: skip
