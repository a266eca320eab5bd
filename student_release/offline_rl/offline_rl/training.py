"""Algorithm-agnostic training and evaluation loops for the neural (CartPole) part.

Nothing here knows about CQL or BC: ``train_offline`` accepts any object with an
``update(batch) -> dict[str, float]`` method, ``evaluate_policy`` any function from an
observation to an action, and ``evaluate_policy_batched`` any function from a batch of
observations to a batch of actions. So a notebook runs these loops on the student's own agent.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.adam import adam as functional_adam

# tqdm: tqdm.auto's bar, imported at the first bar (not with this module: every grading imports it)
from offline_rl.datasets import OfflineDataset, tqdm

__all__ = [
    "Agent",
    "FlatAdam",
    "evaluate_policy",
    "evaluate_policy_batched",
    "flatten_parameters",
    "mlp",
    "set_seed",
    "to_torch_batch",
    "train_offline",
]

_BATCH_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")


class Agent(Protocol):
    """Anything trainable by ``train_offline``."""

    def update(self, batch: dict[str, torch.Tensor]) -> Mapping[str, float | torch.Tensor]:
        """One gradient step on a minibatch; returns the numbers to log (floats, or 0-d tensors
        that ``train_offline`` converts only on the steps it logs)."""
        ...


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256)) -> nn.Sequential:
    """A ReLU multilayer perceptron ``in_dim -> hidden... -> out_dim`` (linear output).

    Input: (B, in_dim); output: (B, out_dim).
    """
    if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"mlp sizes must be positive, got in_dim={in_dim}, out_dim={out_dim}, hidden={hidden}."
        )
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)


def to_torch_batch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Convert a numpy minibatch (from ``OfflineDataset.sample``) to tensors.

    Returns:
        observations: (B, obs_dim) float32; actions: (B,) int64; rewards: (B,) float32;
        next_observations: (B, obs_dim) float32; terminals: (B,) float32 in {0, 1}.

    Raises:
        ValueError: a key is missing or a field has the wrong shape.
    """
    missing = [k for k in _BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; expected the keys {list(_BATCH_KEYS)}.")
    actions = np.asarray(batch["actions"])
    if actions.ndim != 1:
        raise ValueError(f"batch['actions'] must have shape (B,), got {actions.shape}.")
    n = actions.shape[0]
    for key in ("rewards", "terminals"):
        shape = np.asarray(batch[key]).shape
        if shape != (n,):
            raise ValueError(f"batch[{key!r}] must have shape ({n},) like actions, got {shape}.")
    if not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"batch['actions'] must hold integers, got dtype {actions.dtype}.")
    obs = np.asarray(batch["observations"], dtype=np.float32)
    next_obs = np.asarray(batch["next_observations"], dtype=np.float32)
    if obs.shape[0] != n or next_obs.shape != obs.shape:
        raise ValueError(
            f"observations {obs.shape} and next_observations {next_obs.shape} must both have "
            f"{n} rows and the same shape."
        )
    # Observations must be (B, obs_dim) for an MLP: flatten any extra dimensions.
    return {
        "observations": torch.from_numpy(obs.reshape(n, -1)),
        "actions": torch.from_numpy(actions.astype(np.int64)),
        "rewards": torch.from_numpy(np.asarray(batch["rewards"], dtype=np.float32)),
        "next_observations": torch.from_numpy(next_obs.reshape(n, -1)),
        # float 0/1 so that ``1 - terminals`` is arithmetic, not an error on bool tensors.
        "terminals": torch.from_numpy(np.asarray(batch["terminals"]).astype(np.float32)),
    }


def flatten_parameters(params: Iterable[nn.Parameter]) -> Tensor:
    """Move ``params`` into one contiguous vector and return it; each parameter becomes a view
    of its slice, so the network computes exactly as before.

    Whatever must touch every parameter each step (Adam, the Polyak average) then runs once on
    one tensor instead of once per tensor (six for a two-hidden-layer MLP): at batch 32 the
    per-tensor dispatch, not the arithmetic, is most of the cost of those steps.

    Returns:
        theta: (P,) where P is the total number of parameters.
    """
    params = list(params)
    with torch.no_grad():
        theta = torch.cat([p.reshape(-1) for p in params])
    for p, view in zip(params, _views_of(theta, params)):
        p.data = view
    return theta


def _views_of(vector: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Split ``vector`` (P,) into views shaped like ``params``, in order (P = their total size)."""
    views, offset = [], 0
    for p in params:
        views.append(vector[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return views


class FlatAdam:
    """Adam (Kingma & Ba, 2015) with torch's defaults (betas 0.9 and 0.999, eps 1e-8):
    ``m <- 0.9 m + 0.1 g``, ``v <- 0.999 v + 0.001 g^2``, then
    ``theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected moments.

    ``torch.optim.Adam(fused=True)`` minus ``Optimizer.step``'s bookkeeping (hooks, profiler
    records, state lookups), which costs about a quarter of a training step at batch 32 (and
    a tenth at batch 64 with 256 hidden units), on the
    parameters flattened into one vector ``theta`` (``flatten_parameters``) whose gradients are
    one vector ``grad`` too: a step is one call of torch's functional Adam
    (``torch.optim.adam.adam``) on one tensor, the same arithmetic on the same numbers.
    ``tests/test_neural.py`` checks it against ``torch.optim.Adam``.

    Use it where the caller's code owns the training step (``zero_grad``, ``backward``,
    ``step``): it keeps every ``.grad`` as a view of one vector, so code that sets a ``.grad``
    to None or replaces it makes ``step`` raise.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self.params = list(params)
        self.lr = lr
        self.theta = flatten_parameters(self.params)  # (P,)
        self.grad = torch.zeros_like(self.theta)  # (P,): every p.grad is a view of it
        for p, view in zip(self.params, _views_of(self.grad, self.params)):
            p.grad = view  # backward() adds into an existing .grad in place: it stays this view
        self._grad_views = [p.grad for p in self.params]
        self.exp_avg = torch.zeros_like(self.theta)  # m
        self.exp_avg_sq = torch.zeros_like(self.theta)  # v
        self.t = torch.zeros(())  # step count

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients (kept, not freed: they are views of one vector)."""
        self.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is not g for p, g in zip(self.params, self._grad_views)):
            raise RuntimeError(
                "a parameter's .grad was replaced (set to None or a new tensor): this Adam "
                "updates the gradient vector its .grad views belong to; use its zero_grad()."
            )
        functional_adam(
            [self.theta], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.t],
            fused=True, amsgrad=False, beta1=0.9, beta2=0.999, lr=self.lr, weight_decay=0.0,
            eps=1e-8, maximize=False,
        )  # fmt: skip


@contextlib.contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Treat float32 denormals (nonzero magnitudes below ~1.2e-38) as 0 inside the block.

    Adam's first moment of a weight whose gradient stays 0 (a ReLU unit that no state of the
    batch activates) decays by 0.9 a step into the denormal range and stays there: for the
    smallest denormals, 0.9 x rounds back to x. Arithmetic on denormals takes a slow microcode
    path on x86, and on CartPole a quarter of the hidden layer's moments end up there, which
    doubles the cost of an Adam step. Flushing them changes values only below 1.2e-38.
    The setting is per thread and has no getter: afterwards it goes back to torch's default, off.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave the setting alone), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_offline(
    agent: Agent,
    dataset: OfflineDataset,
    n_steps: int,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 100,
    n_threads: int | None = 1,
    desc: str = "offline training",
) -> dict[str, list[float]]:
    """Run ``n_steps`` gradient steps of ``agent.update`` on uniform minibatches of ``dataset``.

    Args:
        agent: any object with ``update(batch: dict[str, Tensor]) -> dict[str, float]``.
        dataset: the fixed offline data; never extended.
        n_steps: number of gradient steps (>= 1).
        batch_size: transitions per minibatch (>= 1).
        seed: seeds minibatch sampling, so the same agent and seed give the same run.
        progress: show a tqdm bar with the latest logged numbers.
        desc: the bar's label (which network is training, when several are).
        log_every: record the numbers every ``log_every`` steps (and at the last step).
        n_threads: torch threads during training; None keeps the current setting. One by
            default: a step of this chapter's small MLPs is too short to split, and a second
            thread mostly waits (3,000 CQL steps at batch 64 took 4.6 CPU s on one thread and
            19 CPU s on two, on the course's 2-core machine with other work beside it).

    Returns:
        ``{"step": [...], <each key update returns>: [...]}``, one entry per logged step.
    """
    if n_steps < 1 or batch_size < 1 or log_every < 1:
        raise ValueError(
            "n_steps, batch_size and log_every must be positive, got "
            f"{n_steps}, {batch_size}, {log_every}."
        )
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; collect some transitions first.")
    if not callable(getattr(agent, "update", None)):
        raise TypeError(
            f"{type(agent).__name__} has no update(batch) method; train_offline needs one."
        )
    rng = np.random.default_rng(seed)
    # Convert (and check) the whole dataset once; each step then only gathers rows. The rows
    # are those ``dataset.sample(batch_size, rng)`` would draw, so the minibatches are the same.
    all_transitions = to_torch_batch({key: getattr(dataset, key) for key in _BATCH_KEYS})
    history: dict[str, list[float]] = {"step": []}
    # Redrawn at most twice a second: in a notebook each redraw is a widget message, and at
    # tqdm's default (10 a second) the redraws cost the CartPole cell about a twentieth of its time.
    bar = tqdm(range(1, n_steps + 1), desc=desc, disable=not progress, leave=False, mininterval=0.5)
    with _denormals_flushed(), _torch_threads(n_threads):
        for step in bar:
            rows = torch.from_numpy(rng.integers(0, len(dataset), size=batch_size))
            # index_select, not value[rows]: the same rows, without advanced indexing's overhead
            batch = {key: value.index_select(0, rows) for key, value in all_transitions.items()}
            info = agent.update(batch)
            if step % log_every == 0 or step == n_steps:
                history["step"].append(float(step))
                for key, value in info.items():
                    history.setdefault(key, []).append(float(value))
                # shown at the bar's next redraw, not redrawn now
                bar.set_postfix({k: f"{float(v):.3g}" for k, v in info.items()}, refresh=False)
    return history


def evaluate_policy(
    env: str | gym.Env,
    act: Callable[[np.ndarray], int],
    n_episodes: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Undiscounted return of ``act`` over ``n_episodes`` episodes.

    Episode ``i`` starts from ``env.reset(seed=seed + i)``, so a deterministic ``act`` gives the
    same returns on every call.

    Args:
        env: a gymnasium id (such as ``"CartPole-v1"``) or an environment instance.
        act: maps one observation to an action, e.g. ``agent.act``.
        n_episodes: number of episodes (>= 1).
        seed: seed of the first reset.

    Returns:
        returns: (n_episodes,) float64.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}.")
    own_env = isinstance(env, str)
    environment = gym.make(env) if own_env else env
    returns = np.zeros(n_episodes, dtype=np.float64)
    try:
        for i in range(n_episodes):
            obs, _ = environment.reset(seed=seed + i)
            done = False
            while not done:
                obs, reward, terminated, truncated, _ = environment.step(int(act(obs)))
                returns[i] += float(reward)
                done = terminated or truncated
    finally:
        if own_env:
            environment.close()
    return returns


def evaluate_policy_batched(
    env_id: str,
    act_batch: Callable[[np.ndarray], np.ndarray],
    n_episodes: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Undiscounted returns of the episodes ``evaluate_policy`` plays, played side by side.

    Episode ``i`` runs in its own environment from ``reset(seed=seed + i)``, as in
    ``evaluate_policy``; at every time step ``act_batch`` gets the observations of all the
    episodes still running at once. A network then runs one forward pass per time step
    instead of one per episode and step: for ten CartPole episodes of 500 steps, 500 small
    batches instead of 5,000 single rows, which is most of an evaluation's cost.

    Args:
        env_id: a gymnasium id such as ``"CartPole-v1"``.
        act_batch: maps observations (n, O) float32 to actions (n,) ints, e.g. the greedy
            ``argmax`` of a Q-network's rows; ``n`` shrinks as episodes end.
        n_episodes: number of episodes (>= 1).
        seed: seed of the first episode's reset.

    Returns:
        returns: (n_episodes,) float64.

    Raises:
        ValueError: ``n_episodes < 1``, or ``act_batch`` does not return one action per row.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}.")
    envs = [gym.make(env_id) for _ in range(n_episodes)]
    returns = np.zeros(n_episodes, dtype=np.float64)
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])  # (N, O)
        running = list(range(n_episodes))  # the episodes not over yet
        while running:
            actions = np.asarray(act_batch(obs[running]))  # (n,)
            if actions.shape != (len(running),):
                raise ValueError(
                    f"act_batch must return one action per observation, shape ({len(running)},) "
                    f"for observations of shape {obs[running].shape}; got {actions.shape}."
                )
            for i, action in zip(list(running), actions.tolist()):
                obs[i], reward, terminated, truncated, _ = envs[i].step(int(action))
                returns[i] += float(reward)
                if terminated or truncated:
                    running.remove(i)
    finally:
        for env in envs:
            env.close()
    return returns
