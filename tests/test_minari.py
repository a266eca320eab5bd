"""The chapter's datasets as Minari datasets: ``OfflineDataset.to_minari`` / ``from_minari``.

Minari is optional (never in the graded environment); it is a dev pin of requirements.txt, so
.venv and CI have it. Without it these tests skip on a laptop and fail under CI.
"""

from __future__ import annotations

import os
import sys

import gymnasium as gym
import numpy as np
import pytest
from offline_rl import behavior, cartpole, envs
from offline_rl.datasets import OfflineDataset, collect_dataset

if os.environ.get("CI"):
    import minari  # CI must have it (requirements.txt [dev]): fail, never skip
else:
    minari = pytest.importorskip("minari", reason="minari is a dev pin: `make venv` installs it")


@pytest.fixture(autouse=True)
def _minari_home(tmp_path, monkeypatch):
    """Minari writes under ~/.minari/datasets by default: keep each test's datasets apart."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def _truncated_cartpole(seed: int) -> OfflineDataset:
    """Random CartPole play cut at 15 steps: episodes end both ways (terminal and time limit)."""
    env = gym.make("CartPole-v1", max_episode_steps=15)
    rng_policy = behavior.random_policy(2)
    return collect_dataset(env, rng_policy, n_episodes=30, seed=seed, progress=False)


def _assert_same(original: OfflineDataset, back: OfflineDataset) -> None:
    for name, array in original.as_dict().items():
        other = getattr(back, name)
        assert other.dtype == array.dtype, f"{name}: dtype {other.dtype} != {array.dtype}"
        assert other.shape == array.shape, f"{name}: shape {other.shape} != {array.shape}"
        np.testing.assert_array_equal(other, array, err_msg=name)


CASES = {
    "grid-stitch": (lambda seed: behavior.stitching_dataset(), "OfflineGrid-Stitch-v0"),
    "grid-quality": (
        lambda seed: behavior.quality_dataset("cliff", 0.5, 40, seed=seed),
        "OfflineGrid-Cliff-v0",
    ),
    "cartpole-poor": (
        lambda seed: cartpole.make_cartpole_dataset("poor", 12, seed=seed, progress=False),
        "CartPole-v1",
    ),
    "cartpole-truncated": (_truncated_cartpole, "CartPole-v1"),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_array_for_array(case, seed):
    make, env_id = CASES[case]
    data = make(seed)
    dataset_id = f"offline_rl/{case}-s{seed}-v0"
    data.to_minari(dataset_id, env_id)

    # Minari's own loader sees episodes, steps, spaces and the environment's spec.
    loaded = minari.load_dataset(dataset_id)
    env = gym.make(env_id)
    assert loaded.total_episodes == data.n_episodes
    assert loaded.total_steps == len(data)
    assert loaded.observation_space == env.observation_space
    assert loaded.action_space == env.action_space
    assert loaded.spec.env_spec.id == env_id
    episodes = list(loaded.iterate_episodes())
    assert sum(int(np.sum(e.truncations)) for e in episodes) == int(data.truncations.sum())
    assert sum(int(np.sum(e.terminations)) for e in episodes) == int(data.terminals.sum())

    _assert_same(data, OfflineDataset.from_minari(dataset_id))
    _assert_same(data, OfflineDataset.from_minari(loaded))


def test_the_cases_cover_both_ways_an_episode_ends():
    data = _truncated_cartpole(0)
    assert data.truncations.any() and data.terminals.any()
    assert envs  # imported for its side effect: the OfflineGrid-* ids are registered


def test_an_episode_that_is_not_one_trajectory_is_refused_with_the_fix():
    data = behavior.stitching_dataset()
    shuffled = data.select(np.arange(len(data))[::-1], episode_starts=np.array([0]))
    with pytest.raises(ValueError, match=r"not one trajectory.*select"):
        shuffled.to_minari("offline_rl/bad-v0", "OfflineGrid-Stitch-v0")


def test_without_minari_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # import minari -> ImportError
    with pytest.raises(ImportError, match=r'pip install "minari\[hdf5\]"'):
        behavior.stitching_dataset().to_minari("offline_rl/x-v0", "OfflineGrid-Stitch-v0")
    with pytest.raises(ImportError, match="minari"):
        OfflineDataset.from_minari("offline_rl/x-v0")
