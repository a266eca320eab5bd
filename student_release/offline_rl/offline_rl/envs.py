"""Deterministic GridWorlds for offline RL, as real gymnasium environments.

A grid has ``rows x cols`` cells; cell ``(row, col)`` has state index ``row * cols + col``
(row 0 is the top). Actions:

====== ===== ===============
action name  move
====== ===== ===============
0      up    row - 1
1      right col + 1
2      down  row + 1
3      left  col - 1
====== ===== ===============

Moving into a wall or off the grid leaves the agent where it is (and still costs a step).
Entering a goal or pit cell ends the episode (``terminated``) and pays that cell's reward
*instead of* the step cost; every other step pays ``-step_cost``. After ``horizon`` steps the
episode is cut (``truncated``), which is not a terminal state.

Importing this module registers ``OfflineGrid-Stitch-v0``, ``OfflineGrid-Cliff-v0`` and
``OfflineGrid-Open-v0`` with gymnasium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "ACTION_DELTAS",
    "ACTION_NAMES",
    "LAYOUTS",
    "GridLayout",
    "GridWorldEnv",
    "get_layout",
    "make_grid_env",
    "transition_model",
]

Cell = tuple[int, int]

#: Action names, indexed by action.
ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")
#: (d_row, d_col) of each action.
ACTION_DELTAS: tuple[Cell, ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
N_ACTIONS = 4

OBS_MODES = ("index", "onehot", "coords")


@dataclass(frozen=True)
class GridLayout:
    """A deterministic grid: geometry, rewards, horizon and evaluation discount."""

    name: str
    """Short name used in ``LAYOUTS`` and plot titles."""
    rows: int
    """Number of rows (row 0 is drawn at the top)."""
    cols: int
    """Number of columns."""
    start: Cell
    """(row, col) where every episode starts."""
    goals: dict[Cell, float]
    """Terminal cells with a positive reward paid on entering them."""
    pits: dict[Cell, float] = field(default_factory=dict)
    """Terminal cells with a negative reward paid on entering them (pits, lava)."""
    walls: frozenset[Cell] = frozenset()
    """Blocked cells; moving into one leaves the agent in place."""
    step_cost: float = 1.0
    """Every non-terminal step pays reward ``-step_cost``."""
    horizon: int = 20
    """Episodes are truncated after this many steps."""
    gamma: float = 0.9
    """Discount factor the chapter uses to evaluate (and learn) on this layout."""

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"GridLayout {self.name!r}: rows and cols must be >= 1.")
        cells = [self.start, *self.goals, *self.pits, *self.walls]
        for cell in cells:
            if not (0 <= cell[0] < self.rows and 0 <= cell[1] < self.cols):
                raise ValueError(
                    f"GridLayout {self.name!r}: cell {cell} is outside the "
                    f"{self.rows}x{self.cols} grid."
                )
        special = [self.start, *self.goals, *self.pits]
        if len(set(special)) != len(special) or set(special) & set(self.walls):
            raise ValueError(
                f"GridLayout {self.name!r}: start, goals, pits and walls must be distinct cells."
            )
        if not self.goals:
            raise ValueError(f"GridLayout {self.name!r} needs at least one goal cell.")
        if self.horizon < 1:
            raise ValueError(f"GridLayout {self.name!r}: horizon must be >= 1.")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"GridLayout {self.name!r}: gamma must be in [0, 1).")

    @property
    def n_states(self) -> int:
        """S = rows * cols (walls and terminal cells included, they are just unreachable
        or absorbing)."""
        return self.rows * self.cols

    @property
    def n_actions(self) -> int:
        """A = 4."""
        return N_ACTIONS

    def state_index(self, cell: Cell) -> int:
        """Index ``row * cols + col`` of a (row, col) cell."""
        return int(cell[0]) * self.cols + int(cell[1])

    def coords(self, state: int) -> Cell:
        """(row, col) of a state index."""
        return divmod(int(state), self.cols)

    @property
    def start_state(self) -> int:
        """State index of the start cell."""
        return self.state_index(self.start)

    def terminal_reward(self, cell: Cell) -> float | None:
        """Reward for entering ``cell`` if it is terminal, else None."""
        if cell in self.goals:
            return float(self.goals[cell])
        if cell in self.pits:
            return float(self.pits[cell])
        return None

    def move(self, cell: Cell, action: int) -> Cell:
        """The deterministic successor cell; walls and edges keep the agent in place."""
        dr, dc = ACTION_DELTAS[action]
        nxt = (cell[0] + dr, cell[1] + dc)
        if not (0 <= nxt[0] < self.rows and 0 <= nxt[1] < self.cols) or nxt in self.walls:
            return cell
        return nxt


def _row(r: int, cols: range, reward: float) -> dict[Cell, float]:
    return {(r, c): reward for c in cols}


LAYOUTS: dict[str, GridLayout] = {
    # Stitching: family A  S↑↑→→ M ↑↑←← pit  (return -17, 6 copies)
    #            family B  S→→→↑←↑ M →→↑↑ goal (return +1, 4 copies)
    # meet only at S=(4,0) and M=(2,2); S↑↑→→ M →→↑↑ goal returns +3.
    "stitch": GridLayout(
        name="stitch",
        rows=5,
        cols=5,
        start=(4, 0),
        goals={(0, 4): 10.0},
        pits={(0, 0): -10.0},
        step_cost=1.0,
        horizon=20,
        gamma=0.9,
    ),
    # A narrow bridge (row 1) between two rows of lava: every action except "right" and
    # "left" from a bridge cell is catastrophic.
    "cliff": GridLayout(
        name="cliff",
        rows=3,
        cols=10,
        start=(1, 0),
        goals={(1, 9): 10.0},
        pits={**_row(0, range(10), -100.0), **_row(2, range(10), -100.0)},
        step_cost=1.0,
        horizon=30,
        gamma=0.9,
    ),
    # A plain 6x6 room: start bottom-left, goal top-right.
    "open": GridLayout(
        name="open",
        rows=6,
        cols=6,
        start=(5, 0),
        goals={(0, 5): 10.0},
        step_cost=1.0,
        horizon=30,
        gamma=0.9,
    ),
}


def get_layout(layout: str | GridLayout) -> GridLayout:
    """The layout called ``layout`` (a GridLayout passes through unchanged).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if isinstance(layout, GridLayout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}.")
    return LAYOUTS[layout]


def transition_model(layout: str | GridLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact tabular model of a (deterministic) layout.

    Terminal cells and walls are absorbing with reward 0 and ``terminal_next`` True, so any
    Bellman backup gives them value 0.

    Returns:
        P: (S, A) int64 next state.
        R: (S, A) float64 reward of the transition.
        terminal_next: (S, A) bool, True when the next state is terminal (no bootstrap).
    """
    lay = get_layout(layout)
    S, A = lay.n_states, lay.n_actions
    P = np.zeros((S, A), dtype=np.int64)
    R = np.zeros((S, A), dtype=np.float64)
    terminal_next = np.zeros((S, A), dtype=bool)
    for s in range(S):
        cell = lay.coords(s)
        absorbing = lay.terminal_reward(cell) is not None or cell in lay.walls
        for a in range(A):
            if absorbing:
                P[s, a], terminal_next[s, a] = s, True
                continue
            nxt = lay.move(cell, a)
            P[s, a] = lay.state_index(nxt)
            reward = lay.terminal_reward(nxt)
            terminal_next[s, a] = reward is not None
            R[s, a] = -lay.step_cost if reward is None else reward
    return P, R, terminal_next


# Colours (RGB) used by render().
_FLOOR = (235, 235, 235)
_WALL = (60, 60, 60)
_START = (120, 160, 230)
_GOAL = (80, 190, 90)
_PIT = (220, 70, 50)
_AGENT = (250, 200, 30)
_GRIDLINE = (180, 180, 180)


class GridWorldEnv(gym.Env):
    """A deterministic GridWorld (see the module docstring for actions and rewards).

    Args:
        layout: a name from ``LAYOUTS`` or a :class:`GridLayout`.
        obs_mode: ``"index"`` (default, ``Discrete(S)`` state index), ``"onehot"``
            (``Box`` float32 of shape (S,)) or ``"coords"`` (``Box`` float32 (row, col)
            scaled to [0, 1]) for neural agents.
        render_mode: None or ``"rgb_array"`` (an (H, W, 3) uint8 image).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        layout: str | GridLayout = "open",
        obs_mode: str = "index",
        render_mode: str | None = None,
        cell_pixels: int = 16,
    ) -> None:
        self.layout = get_layout(layout)
        if obs_mode not in OBS_MODES:
            raise ValueError(f"Unknown obs_mode {obs_mode!r}; choose one of {list(OBS_MODES)}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"Unsupported render_mode {render_mode!r}; use None or 'rgb_array'.")
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.cell_pixels = int(cell_pixels)
        S = self.layout.n_states
        self.action_space = spaces.Discrete(N_ACTIONS)
        if obs_mode == "index":
            self.observation_space: spaces.Space = spaces.Discrete(S)
        elif obs_mode == "onehot":
            self.observation_space = spaces.Box(0.0, 1.0, shape=(S,), dtype=np.float32)
        else:
            self.observation_space = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self._cell: Cell = self.layout.start
        self._t = 0

    def observe(self, state: int) -> Any:
        """The observation of a state index in this env's ``obs_mode``."""
        if self.obs_mode == "index":
            return int(state)
        if self.obs_mode == "onehot":
            obs = np.zeros(self.layout.n_states, dtype=np.float32)
            obs[state] = 1.0
            return obs
        r, c = self.layout.coords(state)
        scale = np.array(
            [max(self.layout.rows - 1, 1), max(self.layout.cols - 1, 1)], dtype=np.float32
        )
        return np.array([r, c], dtype=np.float32) / scale

    @property
    def state(self) -> int:
        """Current state index."""
        return self.layout.state_index(self._cell)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode at the layout's start, or at ``options["start"]`` ((row, col))."""
        super().reset(seed=seed)
        start = self.layout.start if not options or "start" not in options else options["start"]
        start = (int(start[0]), int(start[1]))
        if self.layout.terminal_reward(start) is not None or start in self.layout.walls:
            raise ValueError(f"Cannot start at {start}: it is a wall or a terminal cell.")
        self._cell, self._t = start, 0
        return self.observe(self.state), {"state": self.state}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` (0 up, 1 right, 2 down, 3 left)."""
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}; actions are integers 0..3.")
        self._cell = self.layout.move(self._cell, int(action))
        self._t += 1
        terminal_reward = self.layout.terminal_reward(self._cell)
        terminated = terminal_reward is not None
        reward = float(terminal_reward) if terminated else -float(self.layout.step_cost)
        truncated = (not terminated) and self._t >= self.layout.horizon
        return self.observe(self.state), reward, terminated, truncated, {"state": self.state}

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """An (rows * px, cols * px, 3) uint8 picture of the grid and the agent."""
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'.")
            return None
        return render_grid(self.layout, self._cell, self.cell_pixels)


def render_grid(layout: GridLayout, agent: Cell | None = None, px: int = 16) -> np.ndarray:
    """Draw ``layout`` (and the agent's cell) into an (H, W, 3) uint8 array."""
    img = np.empty((layout.rows * px, layout.cols * px, 3), dtype=np.uint8)
    img[:] = _FLOOR
    colour: dict[Cell, tuple[int, int, int]] = {layout.start: _START}
    colour.update({c: _WALL for c in layout.walls})
    colour.update({c: _GOAL for c in layout.goals})
    colour.update({c: _PIT for c in layout.pits})
    for (r, c), rgb in colour.items():
        img[r * px : (r + 1) * px, c * px : (c + 1) * px] = rgb
    img[::px, :] = _GRIDLINE
    img[:, ::px] = _GRIDLINE
    if agent is not None:
        m = max(px // 4, 1)
        r, c = agent
        img[r * px + m : (r + 1) * px - m, c * px + m : (c + 1) * px - m] = _AGENT
    return img


def make_grid_env(
    layout: str | GridLayout = "open", obs_mode: str = "index", render_mode: str | None = None
) -> GridWorldEnv:
    """A bare :class:`GridWorldEnv` (no gymnasium wrappers), handy for dataset collection."""
    return GridWorldEnv(layout, obs_mode=obs_mode, render_mode=render_mode)


_ENV_IDS = {
    "OfflineGrid-Stitch-v0": "stitch",
    "OfflineGrid-Cliff-v0": "cliff",
    "OfflineGrid-Open-v0": "open",
}


def _register() -> None:
    """Register the named layouts once (re-importing must not warn about re-registration)."""
    for env_id, name in _ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id, entry_point="offline_rl.envs:GridWorldEnv", kwargs={"layout": name}
            )


_register()
