"""Offline datasets: a fixed table of transitions and nothing else.

An offline agent never touches the environment; everything it knows is in an
:class:`OfflineDataset`. The schema is deliberately plain numpy so that students can
inspect it with ``dataset.actions[:10]`` and so that it saves to a single ``.npz``.

Schema (N transitions, observation shape ``O``; ``O == ()`` for integer grid states):

=================== ============ ==========================================================
field               shape        meaning
=================== ============ ==========================================================
observations        (N, *O)      s_t
actions             (N,)         a_t, int64 in ``[0, n_actions)``
rewards             (N,)         r_t, float32
next_observations   (N, *O)      s_{t+1}
terminals           (N,)         bool: s_{t+1} is terminal (no bootstrap from it)
truncations         (N,)         bool: the episode was cut by a time limit after this step
episode_starts      (E,)         int64 index of the first transition of each episode
=================== ============ ==========================================================

``terminals`` and ``truncations`` are kept apart on purpose: a time-limit cut is not a
terminal state, so the Bellman target must still bootstrap there.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "OfflineDataset",
    "Policy",
    "collect_dataset",
    "concatenate",
    "load_dataset",
    "save_dataset",
]

#: A behavior policy maps (observation, numpy Generator) to an action. The generator is the
#: only source of randomness, so a seeded collection is reproducible.
Policy = Callable[[Any, np.random.Generator], int]


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``, imported at the first bar shown. A disabled bar is
    tqdm.std's (the same no-op): collecting data without a bar, as every grading does, never
    imports tqdm.auto, which in a kernel imports ipywidgets (~0.07 CPU-s)."""
    if kwargs.get("disable"):
        from tqdm.std import tqdm as bar
    else:
        from tqdm.auto import tqdm as bar
    return bar(*args, **kwargs)


_ARRAY_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "truncations",
    "episode_starts",
)


@dataclass(frozen=True)
class OfflineDataset:
    """A fixed set of transitions ``(s, a, r, s', terminal, truncated)`` grouped in episodes.

    Construct it with keyword arguments; the constructor validates shapes, dtypes and values
    and raises ``ValueError`` naming the offending field.
    """

    observations: np.ndarray
    """(N, *O) observations s_t (int64 for grid states, float32 for vectors)."""
    actions: np.ndarray
    """(N,) int64 actions a_t."""
    rewards: np.ndarray
    """(N,) float32 rewards r_t."""
    next_observations: np.ndarray
    """(N, *O) next observations s_{t+1}."""
    terminals: np.ndarray
    """(N,) bool, True when s_{t+1} is terminal."""
    truncations: np.ndarray
    """(N,) bool, True when a time limit ended the episode after this step."""
    episode_starts: np.ndarray
    """(E,) int64 start index of each episode; ``episode_starts[0] == 0``."""

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_episodes(self) -> int:
        """Number of episodes E."""
        return int(self.episode_starts.shape[0])

    def episode_slices(self) -> list[slice]:
        """One ``slice`` into the transition arrays per episode, in order."""
        ends = np.append(self.episode_starts[1:], len(self))
        return [slice(int(s), int(e)) for s, e in zip(self.episode_starts, ends)]

    def episode_returns(self, gamma: float = 1.0) -> np.ndarray:
        """Return of each episode, ``sum_t gamma^t r_t``.

        Returns:
            returns: (E,) float64.
        """
        out = np.empty(self.n_episodes, dtype=np.float64)
        for i, sl in enumerate(self.episode_slices()):
            r = self.rewards[sl].astype(np.float64)
            out[i] = float(np.sum(r * gamma ** np.arange(r.shape[0])))
        return out

    def episode(self, index: int) -> OfflineDataset:
        """The transitions of episode ``index`` as a one-episode dataset."""
        sl = self.episode_slices()[index]
        return self.select(np.arange(sl.start, sl.stop), episode_starts=np.array([0]))

    def select(self, index: np.ndarray, episode_starts: np.ndarray | None = None) -> OfflineDataset:
        """A dataset holding the transitions ``index`` (each selected transition its own
        episode unless ``episode_starts`` is given)."""
        index = np.asarray(index, dtype=np.int64)
        starts = np.arange(index.shape[0]) if episode_starts is None else episode_starts
        return OfflineDataset(
            observations=self.observations[index],
            actions=self.actions[index],
            rewards=self.rewards[index],
            next_observations=self.next_observations[index],
            terminals=self.terminals[index],
            truncations=self.truncations[index],
            episode_starts=np.asarray(starts, dtype=np.int64),
        )

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A uniform minibatch (with replacement) as a dict of arrays, keyed like the fields."""
        idx = rng.integers(0, len(self), size=batch_size)
        return {
            "observations": self.observations[idx],
            "actions": self.actions[idx],
            "rewards": self.rewards[idx],
            "next_observations": self.next_observations[idx],
            "terminals": self.terminals[idx],
        }

    def as_dict(self) -> dict[str, np.ndarray]:
        """The seven arrays by field name (what ``save_dataset`` writes)."""
        return {name: getattr(self, name) for name in _ARRAY_FIELDS}

    # ------------------------------------------------------------------ Minari
    def to_minari(
        self,
        dataset_id: str,
        env: str | gym.Env | gym.envs.registration.EnvSpec,
        *,
        description: str | None = None,
        algorithm_name: str | None = None,
    ) -> Any:
        """Write this dataset as a local Minari dataset and return it (a ``MinariDataset``).

        Minari (Farama's dataset format, the successor of D4RL) stores episodes, not
        transitions: episode ``e`` of ``T`` steps becomes ``T + 1`` observations
        (``s_0 .. s_T``, the last one this dataset's final ``next_observations`` row) and ``T``
        actions, rewards, terminations and truncations. ``minari.load_dataset(dataset_id)``
        then reads it anywhere, with the spaces and the environment spec of ``env``.

        Args:
            dataset_id: Minari id, ``"[namespace/]name-v<N>"`` (e.g. ``"offline_rl/cartpole-v0"``).
            env: the gymnasium id (or environment, or spec) that produced the data, e.g.
                ``"CartPole-v1"`` or ``"OfflineGrid-Stitch-v0"``; Minari stores its spec as
                text (the entry point as a string, not the class), and takes the observation
                and action spaces from it.
            description: free text stored with the dataset.
            algorithm_name: the behavior policy's name, stored with the dataset.

        Raises:
            ImportError: minari is not installed (it is optional: ``pip install "minari[hdf5]"``).
            ValueError: an episode is not a trajectory (``next_observations[t]`` differs from
                ``observations[t + 1]`` inside one episode), which Minari cannot store.
        """
        minari = _import_minari()
        from minari.data_collector import EpisodeBuffer

        buffers = []
        for index, sl in enumerate(self.episode_slices()):
            obs, nxt = self.observations[sl], self.next_observations[sl]
            if not np.array_equal(obs[1:], nxt[:-1]):
                raise ValueError(
                    f"episode {index} of this dataset is not one trajectory (next_observations[t] "
                    "!= observations[t + 1] inside it); Minari stores episodes as s_0..s_T. "
                    "Give each transition its own episode (dataset.select(...)) or fix "
                    "episode_starts."
                )
            buffers.append(
                EpisodeBuffer(
                    id=index,
                    observations=list(np.concatenate([obs, nxt[-1:]])),
                    actions=list(self.actions[sl]),
                    rewards=list(self.rewards[sl]),
                    terminations=list(self.terminals[sl]),
                    truncations=list(self.truncations[sl]),
                )
            )
        with warnings.catch_warnings():
            # Minari nags about each metadata field left empty (author e-mail, code permalink,
            # evaluation env): a local export for one's own use needs none of them.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\.")
            return minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env,
                author="Offline RL chapter",
                algorithm_name=algorithm_name or "behavior policy of the chapter",
                description=description
                or f"{len(self)} transitions in {self.n_episodes} episodes (OfflineDataset)",
                data_format="hdf5",  # minari[hdf5]: h5py only, where arrow would need pyarrow
            )

    @staticmethod
    def from_minari(dataset: Any) -> OfflineDataset:
        """Read a Minari dataset (a ``MinariDataset`` or a local dataset id) into this schema.

        Observations become int64 for a ``Discrete`` observation space, float32 otherwise;
        actions int64, rewards float32, terminals and truncations bool, as everywhere in
        this package. Returns the dataset of all episodes, in Minari's episode order.

        Raises:
            ImportError: minari is not installed.
            ValueError: the actions are not integers (this package handles discrete actions).
        """
        minari = _import_minari()
        if isinstance(dataset, str):
            dataset = minari.load_dataset(dataset)
        discrete = isinstance(dataset.observation_space, gym.spaces.Discrete)
        obs_dtype = np.int64 if discrete else np.float32
        cols: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAY_FIELDS}
        start = 0
        for episode in dataset.iterate_episodes():
            observations = np.asarray(episode.observations)
            actions = np.asarray(episode.actions)
            if not np.issubdtype(actions.dtype, np.integer):
                raise ValueError(
                    f"Minari dataset {dataset.spec.dataset_id!r} has {actions.dtype} actions; "
                    "OfflineDataset holds discrete (integer) actions only."
                )
            cols["observations"].append(observations[:-1].astype(obs_dtype))
            cols["next_observations"].append(observations[1:].astype(obs_dtype))
            cols["actions"].append(actions.astype(np.int64))
            cols["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
            cols["terminals"].append(np.asarray(episode.terminations, dtype=bool))
            cols["truncations"].append(np.asarray(episode.truncations, dtype=bool))
            cols["episode_starts"].append(np.array([start], dtype=np.int64))
            start += actions.shape[0]
        return OfflineDataset(**{k: np.concatenate(v) for k, v in cols.items()})

    def __repr__(self) -> str:
        obs_shape = tuple(self.observations.shape[1:])
        return (
            f"OfflineDataset({len(self)} transitions, {self.n_episodes} episodes, "
            f"observation shape {obs_shape}, actions {np.unique(self.actions).tolist()[:10]})"
        )


def _import_minari() -> Any:
    """Minari, imported on demand: it is optional and not part of the course's environment."""
    try:
        import minari
    except ImportError as err:
        raise ImportError(
            "OfflineDataset.to_minari/from_minari need Minari, which the course does not install: "
            'run `pip install "minari[hdf5]"` (the graded notebook never needs it).'
        ) from err
    return minari


def _validate(ds: OfflineDataset) -> None:
    """Check the schema; raise ValueError that names the field and says what is expected."""
    for name in _ARRAY_FIELDS:
        value = getattr(ds, name)
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"OfflineDataset.{name} must be a numpy array, got {type(value).__name__}; "
                f"wrap it with np.asarray(...)."
            )
    n = ds.actions.shape[0] if ds.actions.ndim == 1 else -1
    if n < 0:
        raise ValueError(
            f"OfflineDataset.actions must have shape (N,), got {ds.actions.shape}; "
            "store one integer action per transition."
        )
    for name in ("rewards", "terminals", "truncations"):
        shape = getattr(ds, name).shape
        if shape != (n,):
            raise ValueError(
                f"OfflineDataset.{name} must have shape ({n},) like actions, got {shape}."
            )
    for name in ("observations", "next_observations"):
        arr = getattr(ds, name)
        if arr.ndim < 1 or arr.shape[0] != n:
            raise ValueError(
                f"OfflineDataset.{name} must have N={n} rows like actions, got shape {arr.shape}."
            )
    if ds.observations.shape != ds.next_observations.shape:
        raise ValueError(
            "OfflineDataset.observations and next_observations must have the same shape, got "
            f"{ds.observations.shape} and {ds.next_observations.shape}."
        )
    if not np.issubdtype(ds.actions.dtype, np.integer):
        raise ValueError(
            f"OfflineDataset.actions must hold integers, got dtype {ds.actions.dtype}."
        )
    if n and ds.actions.min() < 0:
        raise ValueError("OfflineDataset.actions must be non-negative action indices.")
    for name in ("terminals", "truncations"):
        if getattr(ds, name).dtype != np.bool_:
            raise ValueError(
                f"OfflineDataset.{name} must be a bool array, got {getattr(ds, name).dtype}."
            )
    for name in ("observations", "rewards", "next_observations"):
        arr = getattr(ds, name)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"OfflineDataset.{name} contains NaN or infinite values; "
                "check the policy or environment that produced them."
            )
    starts = ds.episode_starts
    if starts.ndim != 1 or not np.issubdtype(starts.dtype, np.integer):
        raise ValueError("OfflineDataset.episode_starts must be a 1-D integer array.")
    if n and (starts.shape[0] == 0 or starts[0] != 0):
        raise ValueError("OfflineDataset.episode_starts must begin with 0.")
    if starts.shape[0] > 1 and np.any(np.diff(starts) <= 0):
        raise ValueError("OfflineDataset.episode_starts must be strictly increasing.")
    if starts.shape[0] and starts[-1] >= max(n, 1):
        raise ValueError(f"OfflineDataset.episode_starts points past the last transition ({n}).")


def collect_dataset(
    env: gym.Env,
    policy: Policy,
    n_episodes: int,
    seed: int,
    progress: bool = True,
    desc: str = "collecting episodes",
) -> OfflineDataset:
    """Roll out ``policy`` in ``env`` for ``n_episodes`` and record every transition.

    Args:
        env: any gymnasium environment with a discrete action space.
        policy: behavior policy ``(observation, rng) -> action``.
        n_episodes: number of episodes to record (>= 1).
        seed: seeds both the environment's first reset and the policy's generator, so the
            same seed gives the same dataset.
        progress: show a tqdm bar over episodes.
        desc: label of the progress bar.

    Returns:
        The recorded dataset; episodes end on termination or truncation.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}.")
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    cols: dict[str, list[Any]] = {k: [] for k in _ARRAY_FIELDS if k != "episode_starts"}
    starts: list[int] = []
    for ep in tqdm(range(n_episodes), desc=desc, disable=not progress, leave=False):
        obs, _ = env.reset(seed=seed if ep == 0 else None)
        starts.append(len(cols["actions"]))
        done = False
        while not done:
            action = int(policy(obs, rng))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            cols["observations"].append(obs)
            cols["actions"].append(action)
            cols["rewards"].append(reward)
            cols["next_observations"].append(next_obs)
            cols["terminals"].append(bool(terminated))
            cols["truncations"].append(bool(truncated))
            obs = next_obs
            done = terminated or truncated
    obs_arr = np.asarray(cols["observations"])
    obs_dtype = np.int64 if np.issubdtype(obs_arr.dtype, np.integer) else np.float32
    return OfflineDataset(
        observations=obs_arr.astype(obs_dtype),
        actions=np.asarray(cols["actions"], dtype=np.int64),
        rewards=np.asarray(cols["rewards"], dtype=np.float32),
        next_observations=np.asarray(cols["next_observations"]).astype(obs_dtype),
        terminals=np.asarray(cols["terminals"], dtype=bool),
        truncations=np.asarray(cols["truncations"], dtype=bool),
        episode_starts=np.asarray(starts, dtype=np.int64),
    )


def concatenate(datasets: list[OfflineDataset]) -> OfflineDataset:
    """Join datasets episode-wise (episode order is kept)."""
    if not datasets:
        raise ValueError("concatenate needs at least one dataset.")
    offsets = np.cumsum([0] + [len(d) for d in datasets[:-1]])
    return OfflineDataset(
        **{
            name: np.concatenate([getattr(d, name) for d in datasets])
            for name in _ARRAY_FIELDS
            if name != "episode_starts"
        },
        episode_starts=np.concatenate(
            [d.episode_starts + off for d, off in zip(datasets, offsets)]
        ).astype(np.int64),
    )


def save_dataset(dataset: OfflineDataset, path: str | Path) -> Path:
    """Write ``dataset`` to a compressed ``.npz`` file and return its path."""
    path = Path(path)
    np.savez_compressed(path, **dataset.as_dict())
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_dataset(path: str | Path) -> OfflineDataset:
    """Read a dataset written by :func:`save_dataset`, checking the schema.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable ``.npz`` or misses/garbles a field; the
            message names the field.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No dataset file at {path}; create one with save_dataset(...).")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ValueError(
            f"{path} is not a readable .npz dataset ({err}); regenerate it with save_dataset(...)."
        ) from err
    missing = [k for k in _ARRAY_FIELDS if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} is missing the field(s) {missing}; an OfflineDataset file needs "
            f"{list(_ARRAY_FIELDS)}."
        )
    extra = sorted(set(arrays) - set(_ARRAY_FIELDS))
    if extra:
        raise ValueError(f"{path} has unknown field(s) {extra}; is it an OfflineDataset file?")
    return OfflineDataset(**arrays)
