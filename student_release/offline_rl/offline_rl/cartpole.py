"""CartPole behavior policies and offline datasets.

The chapter's "Atari from human demos" example needs a GPU and hours per run. Gymnasium's
``CartPole-v1`` stands in for it at CPU scale: the same story (a deep Q-network learns from a
fixed log of someone else's play, never touching the environment) in seconds per run.

Behavior policies (all have the ``offline_rl.datasets.Policy`` signature ``(obs, rng) -> int``):

* ``expert_policy`` — a hand-written PD controller on the pole angle and angular velocity (plus a
  small pull toward the track centre); it balances for the full 500 steps.
* ``epsilon_expert_policy(epsilon)`` — the expert, but with probability ``epsilon`` a uniformly
  random action instead ("a tired human demonstrator").
* ``random_policy`` — uniform over the two actions.

``make_cartpole_dataset(quality, ...)`` records a dataset from ``epsilon = 1 - quality``, or
from a named behavior in ``BEHAVIORS`` (``"expert"``, ``"good"``, ``"medium"``, ``"poor"``,
``"random"``).

Observation (float32, shape (4,)): cart position, cart velocity, pole angle (rad), pole angular
velocity. Actions: 0 pushes the cart left, 1 pushes it right. Reward +1 per step; an episode
terminates when the pole falls (a true terminal) or is truncated at 500 steps (not a terminal).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from offline_rl.datasets import OfflineDataset, Policy, collect_dataset

__all__ = [
    "BEHAVIORS",
    "ENV_ID",
    "MAX_RETURN",
    "N_ACTIONS",
    "OBS_DIM",
    "ExpertValue",
    "behavior_policy",
    "epsilon_expert_policy",
    "expert_action",
    "expert_actions",
    "expert_policy",
    "make_cartpole_dataset",
    "make_env",
    "random_policy",
]

ENV_ID = "CartPole-v1"
"""Gymnasium id of the environment."""
OBS_DIM = 4
"""Length of an observation vector."""
N_ACTIONS = 2
"""Number of discrete actions (push left, push right)."""
MAX_RETURN = 500.0
"""Return of an episode that reaches the time limit."""

# Gains of the expert's linear controller on (x, x_dot, theta, theta_dot). The angle terms do
# the balancing; the small position terms stop the cart from drifting off the track.
_EXPERT_GAINS = np.array([0.1, 0.5, 10.0, 2.0])

BEHAVIORS: dict[str, float] = {
    "expert": 1.0,
    "good": 0.8,
    "medium": 0.5,
    "poor": 0.25,
    "random": 0.0,
}
"""Named behavior qualities; ``quality`` is the probability of following the expert, so the
behavior takes a uniformly random action with probability ``epsilon = 1 - quality``.

``"poor"`` (75% random actions) has a mean return near 50, a tenth of the expert's. Yet greedy
behavior cloning *denoises* it: wherever the expert's action is still the most frequent one
(any quality > 0, given enough data) the cloned policy's argmax is the expert's action, so BC
balances for hundreds of steps. Only on ``"random"`` data is there nothing to imitate.

``"expert"`` data are the notebook's over-estimation example: in every state only the expert's
action appears, and no episode ends in a fall (500 steps is a truncation, not a terminal), so
nothing in the data tells naive offline DQN that the other action is bad.
"""


def make_env() -> gym.Env:
    """A fresh ``CartPole-v1`` environment."""
    return gym.make(ENV_ID)


def expert_action(obs: np.ndarray) -> int:
    """The expert's action: push right (1) when the weighted state is positive.

    Args:
        obs: (4,) observation ``[x, x_dot, theta, theta_dot]``.
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape != (OBS_DIM,):
        raise ValueError(
            f"expert_action expects one CartPole observation of shape (4,), got {obs.shape}."
        )
    return int(float(_EXPERT_GAINS @ obs) > 0.0)


def expert_actions(obs: torch.Tensor) -> torch.Tensor:
    """The expert's actions for a batch: obs (B, 4) float -> (B,) int64 (as ``expert_action``)."""
    if obs.ndim != 2 or obs.shape[1] != OBS_DIM:
        raise ValueError(
            "expert_actions expects a batch of CartPole observations of shape (B, 4), got "
            f"{tuple(obs.shape)}."
        )
    gains = torch.as_tensor(_EXPERT_GAINS, dtype=obs.dtype)
    return (obs @ gains > 0).long()


class ExpertValue(nn.Module):
    """A Q-network seen through the expert: every column holds ``Q(s, expert(s))``.

    Used as the *target* network of a DQN-style loss, it turns ``max_a' Q_target(s', a')`` into
    ``Q_target(s', expert(s'))``: the Bellman target of *evaluating* the expert (SARSA / fitted
    Q evaluation) instead of improving on it. On expert data, with no penalty, this is the
    penalty-free estimate of what the data's own policy is worth, the yardstick for CQL's value.
    Input (B, 4); output (B, n_actions), all columns equal.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        q = self.net(obs)  # (B, A)
        chosen = q.gather(1, expert_actions(obs).unsqueeze(1))  # (B, 1)
        return chosen.expand_as(q)


def expert_policy(obs: np.ndarray, rng: np.random.Generator) -> int:
    """Deterministic expert (``rng`` is unused but keeps the ``Policy`` signature)."""
    return expert_action(obs)


def random_policy(obs: np.ndarray, rng: np.random.Generator) -> int:
    """Uniformly random action."""
    return int(rng.integers(N_ACTIONS))


def epsilon_expert_policy(epsilon: float) -> Policy:
    """The expert with probability ``1 - epsilon``, a uniformly random action otherwise.

    Raises:
        ValueError: ``epsilon`` is not a number in [0, 1].
    """
    epsilon = _check_unit_interval(epsilon, "epsilon")

    def policy(obs: np.ndarray, rng: np.random.Generator) -> int:
        # Always draw, so the random stream does not depend on epsilon's value path.
        explore = rng.random() < epsilon
        random_action = int(rng.integers(N_ACTIONS))
        return random_action if explore else expert_action(obs)

    return policy


def behavior_policy(quality: float | str) -> Policy:
    """The behavior policy for a quality in [0, 1] (1 = expert, 0 = random) or a name in
    ``BEHAVIORS``.

    Raises:
        ValueError: unknown name, or a quality outside [0, 1].
    """
    return epsilon_expert_policy(1.0 - _resolve_quality(quality))


def make_cartpole_dataset(
    quality: float | str,
    n_episodes: int,
    seed: int,
    progress: bool = True,
) -> OfflineDataset:
    """Record ``n_episodes`` of CartPole played by the behavior of the given quality.

    Args:
        quality: probability in [0, 1] of following the expert (else a random action), or a
            name in ``BEHAVIORS`` such as ``"poor"``.
        n_episodes: number of episodes (>= 1).
        seed: seeds the environment and the behavior's randomness; same seed, same dataset.
        progress: show a progress bar over episodes.

    Returns:
        An ``OfflineDataset`` with float32 observations of shape (N, 4).

    Raises:
        ValueError: bad ``quality``, ``n_episodes`` or ``seed``.
    """
    q = _resolve_quality(quality)
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, (int, np.integer)):
        raise ValueError(f"n_episodes must be an int, got {type(n_episodes).__name__}.")
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    env = make_env()
    try:
        return collect_dataset(
            env,
            epsilon_expert_policy(1.0 - q),
            n_episodes=int(n_episodes),
            seed=int(seed),
            progress=progress,
            desc=f"CartPole, quality {q:.2f}",
        )
    finally:
        env.close()


def _resolve_quality(quality: float | str) -> float:
    """Map a name in ``BEHAVIORS`` or a number in [0, 1] to a float quality."""
    if isinstance(quality, str):
        if quality not in BEHAVIORS:
            raise ValueError(
                f"Unknown behavior {quality!r}; use one of {sorted(BEHAVIORS)} "
                "or a number in [0, 1]."
            )
        return BEHAVIORS[quality]
    return _check_unit_interval(quality, "quality")


def _check_unit_interval(value: float, name: str) -> float:
    """``value`` as a float, or a ValueError if it is not a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return value
