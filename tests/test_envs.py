"""The GridWorlds are real, clean gymnasium environments with the documented dynamics."""

import warnings

import gymnasium as gym
import numpy as np
import offline_rl
import pytest
from gymnasium.utils.env_checker import check_env
from offline_rl.envs import LAYOUTS, GridLayout, GridWorldEnv, get_layout, transition_model

ENV_IDS = ["OfflineGrid-Stitch-v0", "OfflineGrid-Cliff-v0", "OfflineGrid-Open-v0"]


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("obs_mode", ["index", "onehot", "coords"])
@pytest.mark.parametrize("render_mode", [None, "rgb_array"])
def test_check_env_is_clean(env_id, obs_mode, render_mode):
    env = gym.make(env_id, obs_mode=obs_mode, render_mode=render_mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_registered_ids_make_envs_and_reregistering_is_silent():
    for env_id in ENV_IDS:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        offline_rl.envs._register()  # what a second import does: must not warn or fail


def test_unknown_layout_raises_with_valid_names():
    with pytest.raises(ValueError, match="stitch"):
        get_layout("maze")
    with pytest.raises(ValueError, match="obs_mode"):
        GridWorldEnv("open", obs_mode="pixels")


def test_render_returns_uint8_image():
    env = GridWorldEnv("stitch", render_mode="rgb_array")
    env.reset(seed=0)
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[:2] == (5 * env.cell_pixels, 5 * env.cell_pixels)


def test_dynamics_walls_terminals_and_truncation():
    lay = GridLayout("t", rows=1, cols=3, start=(0, 0), goals={(0, 2): 5.0}, horizon=3)
    env = GridWorldEnv(lay)
    s, _ = env.reset(seed=0)
    assert s == 0
    s, r, term, trunc, _ = env.step(3)  # left into the edge: stay, pay the step cost
    assert (s, r, term, trunc) == (0, -1.0, False, False)
    s, r, term, trunc, _ = env.step(1)
    assert (s, r, term, trunc) == (1, -1.0, False, False)
    s, r, term, trunc, _ = env.step(0)  # up into the edge, third step hits the horizon
    assert (s, r, term, trunc) == (1, -1.0, False, True)
    env.reset()
    env.step(1)
    s, r, term, trunc, _ = env.step(1)  # entering the goal pays its reward instead of the cost
    assert (s, r, term, trunc) == (2, 5.0, True, False)


def test_transition_model_matches_env_steps():
    for name in LAYOUTS:
        lay = get_layout(name)
        P, R, done = transition_model(lay)
        env = GridWorldEnv(lay)
        for s in range(lay.n_states):
            cell = lay.coords(s)
            if lay.terminal_reward(cell) is not None or cell in lay.walls:
                assert np.all(P[s] == s) and np.all(R[s] == 0) and np.all(done[s])
                continue
            for a in range(4):
                env.reset(options={"start": cell})
                s2, r, term, _, _ = env.step(a)
                assert (P[s, a], R[s, a], done[s, a]) == (s2, r, term)


def test_seeded_reset_and_obs_modes():
    env = GridWorldEnv("open", obs_mode="coords")
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, [1.0, 0.0])  # start (5, 0) scaled to [0, 1]
    onehot, _ = GridWorldEnv("open", obs_mode="onehot").reset(seed=0)
    assert onehot.shape == (36,) and onehot[30] == 1.0 and onehot.sum() == 1.0
