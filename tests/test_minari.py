"""The chapter's datasets as Minari datasets: ``OfflineDataset.to_minari`` / ``from_minari``.

Minari is optional (never in the graded environment); it is a dev pin of requirements.txt, so
.venv and CI have it. Without it these tests skip on a laptop and fail under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


BENCH_PYTHON = Path(__file__).resolve().parents[1] / "build" / "bench-venv" / "bin" / "python"
#: Run in the d3rlpy venv (gymnasium 1.0, no offline_rl installed): Minari reads the datasets the
#: course's venv wrote, d3rlpy builds its dataset through the benchmark's own loader.
READ_IN_BENCH_VENV = """
import json, sys
import gymnasium, minari, numpy as np
sys.path.insert(0, sys.argv[1])
from bench_d3rlpy import _load_d3rlpy
grid = minari.load_dataset("offline_rl/grid-v0")
cart = minari.load_dataset("offline_rl/cartpole-v0")
eps = list(cart.iterate_episodes())
np.savez(sys.argv[2], observations=np.concatenate([e.observations[:-1] for e in eps]),
         actions=np.concatenate([e.actions for e in eps]),
         rewards=np.concatenate([e.rewards for e in eps]),
         terminals=np.concatenate([e.terminations for e in eps]),
         truncations=np.concatenate([e.truncations for e in eps]))
d3 = _load_d3rlpy("offline_rl/cartpole-v0")
print(json.dumps({
    "gymnasium": gymnasium.__version__,
    "offline_rl_importable": "offline_rl" in sys.modules,
    "grid": [grid.spec.env_spec.id, grid.spec.env_spec.entry_point, grid.total_episodes,
             str(grid.observation_space)],
    "cartpole": [cart.spec.env_spec.id, cart.total_steps, cart.spec.env_spec.max_episode_steps],
    "d3rlpy_transitions": int(d3.transition_count),
    "d3rlpy_episodes": int(d3.size()),
}))
"""


@pytest.mark.slow
def test_d3rlpy_venv_reads_the_export(tmp_path, monkeypatch):
    """The version drift, bridged: d3rlpy 2.8 pins gymnasium 1.0, the course runs 1.4. The export
    is written here and read in the benchmark's venv (``make bench-d3rlpy``'s, created if
    missing) without the GridWorld class: Minari keeps the env spec as text."""
    root = BENCH_PYTHON.parents[3]
    made = subprocess.run(
        ["make", "-s", "build/bench-venv/.installed"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    home = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(home))
    grid = behavior.stitching_dataset()
    cart = _truncated_cartpole(0)
    grid.to_minari("offline_rl/grid-v0", "OfflineGrid-Stitch-v0")
    cart.to_minari("offline_rl/cartpole-v0", "CartPole-v1")

    # Without PYTHONDONTWRITEBYTECODE: the venv has no bytecode (built like pip --no-compile), so
    # the first run writes it for what it imports and later runs of the kept venv read it.
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env["MINARI_DATASETS_PATH"] = str(home)
    arrays = tmp_path / "read.npz"
    proc = subprocess.run(
        [str(BENCH_PYTHON), "-c", READ_IN_BENCH_VENV, str(root / "benchmarks"), str(arrays)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["gymnasium"].startswith("1.0"), out  # the drift this test is about is real
    assert gym.__version__ != out["gymnasium"]
    assert not out["offline_rl_importable"]
    assert out["grid"] == [
        "OfflineGrid-Stitch-v0",
        "offline_rl.envs:GridWorldEnv",
        grid.n_episodes,
        "Discrete(25)",
    ]
    assert out["cartpole"] == ["CartPole-v1", len(cart), 500]
    assert out["d3rlpy_episodes"] == cart.n_episodes
    # d3rlpy keeps no s' for a time-limit cut, so it drops each truncated episode's last step
    # (the difference bench_d3rlpy.py prints); everything else arrives.
    cut = int((cart.truncations & ~cart.terminals).sum())
    assert cut > 0
    assert out["d3rlpy_transitions"] == len(cart) - cut
    with np.load(arrays) as read:
        for name in ("observations", "actions", "rewards", "terminals", "truncations"):
            np.testing.assert_array_equal(read[name], getattr(cart, name), err_msg=name)
