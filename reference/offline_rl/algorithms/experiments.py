"""The chapter's experiments, returning plain data (dicts of floats and arrays).

Every algorithm is a keyword argument defaulting to the reference implementation, so a
notebook can pass a student's own function (same signature) and see its own results:

* ``counts_fn(dataset, n_states, n_actions) -> counts (S, A)``
* ``bc_fn(counts) -> policy (S,)``
* ``naive_fn(dataset, n_states, n_actions, gamma) -> Q (S, A)``
* ``cql_fn(dataset, n_states, n_actions, gamma, alpha=...) -> Q (S, A)``
* ``fqe_fn(dataset, policy, n_states, n_actions, gamma) -> Q^π (S, A)``

Returns are undiscounted returns of the greedy policy's rollout from the start cell
(:func:`offline_rl.planning.rollout_return`); "true" values come from exact planning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from offline_rl.algorithms.coverage import bc_policy_from_counts, coverage_counts, ood_fraction
from offline_rl.algorithms.tabular import fitted_q_evaluation, naive_offline_q, tabular_cql
from offline_rl.behavior import narrow_expert_dataset, quality_dataset, stitching_dataset
from offline_rl.datasets import OfflineDataset
from offline_rl.envs import GridLayout, get_layout, transition_model
from offline_rl.online import online_q_learning
from offline_rl.planning import greedy_policy, policy_evaluation, rollout_return, value_iteration
from offline_rl.widgets import DEMO1_SEEDS, DEMO1_SIZES, coverage_sweep

__all__ = [
    "alpha_experiment",
    "alpha_sweep",
    "cql_vs_naive",
    "distribution_shift",
    "offline_policy_selection",
    "offline_to_online",
    "online_vs_offline",
    "quality_experiment",
    "quality_sweep",
    "rollout_outcome",
    "stitching",
    "stitching_experiment",
]

CountsFn = Callable[[OfflineDataset, int, int], np.ndarray]
PolicyFn = Callable[[np.ndarray], np.ndarray]
QFn = Callable[..., np.ndarray]


def rollout_outcome(layout: str | GridLayout, policy: np.ndarray) -> str:
    """How the greedy rollout from the start ends: ``"goal"``, ``"pit"`` or ``"timeout"``
    (stuck or wandering until the horizon)."""
    lay = get_layout(layout)
    P, _, done = transition_model(lay)
    s = lay.start_state
    for _ in range(lay.horizon):
        a = int(policy[s])
        s_next = int(P[s, a])
        if done[s, a]:
            return "goal" if lay.coords(s_next) in lay.goals else "pit"
        s = s_next
    return "timeout"


def _seen_masks(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seen, unseen) (S, A) masks, both restricted to states the dataset visits."""
    visited = (counts.sum(axis=1) > 0)[:, None]
    return (counts > 0) & visited, (counts == 0) & visited


def online_vs_offline(
    layout_name: str = "open",
    n_online_episodes: int = 300,
    sizes: Sequence[int] = DEMO1_SIZES,
    seeds: Sequence[int] = DEMO1_SEEDS,
    counts_fn: CountsFn = coverage_counts,
    progress: bool = True,
) -> dict[str, Any]:
    """Demo 1: an online Q-learner vs the same Q-learning run offline on more and more data.

    The offline data come from one fixed behavior policy (uniformly random); only the number of
    episodes changes (:func:`offline_rl.widgets.coverage_sweep`, what the notebook runs).

    Returns:
        ``online_returns`` (E,) per training episode, ``online_final_return`` (greedy policy),
        ``optimal_return``, ``sizes`` (K,), ``coverage`` and ``returns`` (K, n_seeds).
    """
    lay = get_layout(layout_name)
    q_online, online_returns = online_q_learning(lay, n_online_episodes, 0, progress=progress)
    sweep = coverage_sweep(counts_fn, layout_name, tuple(sizes), tuple(seeds))
    return {
        "online_returns": online_returns,
        "online_final_return": rollout_return(lay, greedy_policy(q_online)),
        "optimal_return": rollout_return(lay, greedy_policy(value_iteration(lay)[1])),
        **sweep,
    }


def distribution_shift(
    layout_name: str = "cliff",
    n_episodes: int = 20,
    epsilon: float = 0.1,
    seed: int = 0,
    counts_fn: CountsFn = coverage_counts,
    naive_fn: QFn = naive_offline_q,
) -> dict[str, Any]:
    """Demo 2: naive offline Q on narrow near-expert data, compared with the true Q*.

    Returns:
        ``q`` (S, A) naive table, ``q_star`` (S, A), ``counts`` (S, A), ``seen_error`` and
        ``unseen_error`` (mean of ``q - q_star`` over seen / unseen pairs of visited states),
        ``unseen_overestimated`` (fraction of unseen pairs with ``q > q_star``),
        ``naive_return``, ``optimal_return`` and ``naive_outcome`` ("goal"/"pit"/"timeout").
    """
    lay = get_layout(layout_name)
    S, A = lay.n_states, lay.n_actions
    ds = narrow_expert_dataset(layout_name, n_episodes, epsilon, seed)
    counts = counts_fn(ds, S, A)
    q = naive_fn(ds, S, A, lay.gamma)
    _, q_star = value_iteration(lay)
    seen, unseen = _seen_masks(counts)
    pi = greedy_policy(q)
    return {
        "dataset": ds,
        "q": q,
        "q_star": q_star,
        "counts": counts,
        "seen_error": float(np.mean((q - q_star)[seen])),
        "unseen_error": float(np.mean((q - q_star)[unseen])) if unseen.any() else 0.0,
        "unseen_overestimated": float(np.mean(q[unseen] > q_star[unseen])) if unseen.any() else 0.0,
        "naive_return": rollout_return(lay, pi),
        "optimal_return": rollout_return(lay, greedy_policy(q_star)),
        "naive_outcome": rollout_outcome(lay, pi),
    }


def cql_vs_naive(
    layout_name: str = "cliff",
    alpha: float = 1.0,
    n_episodes: int = 20,
    epsilon: float = 0.1,
    seed: int = 0,
    counts_fn: CountsFn = coverage_counts,
    naive_fn: QFn = naive_offline_q,
    cql_fn: QFn = tabular_cql,
) -> dict[str, Any]:
    """Demo 3: the same narrow dataset, learned with and without the CQL penalty.

    Returns:
        ``{"naive": {...}, "cql": {...}}`` each with ``q`` (S, A), ``mean_q_seen``,
        ``mean_q_unseen`` (over visited states), ``ood_fraction`` (of the greedy policy),
        ``return`` and ``outcome``; plus ``counts``
        and ``optimal_return``.
    """
    lay = get_layout(layout_name)
    S, A = lay.n_states, lay.n_actions
    ds = narrow_expert_dataset(layout_name, n_episodes, epsilon, seed)
    counts = counts_fn(ds, S, A)
    seen, unseen = _seen_masks(counts)
    out: dict[str, Any] = {"counts": counts, "dataset": ds}
    for name, q in (
        ("naive", naive_fn(ds, S, A, lay.gamma)),
        ("cql", cql_fn(ds, S, A, lay.gamma, alpha=alpha)),
    ):
        pi = greedy_policy(q)
        out[name] = {
            "q": q,
            "mean_q_seen": float(q[seen].mean()),
            "mean_q_unseen": float(q[unseen].mean()) if unseen.any() else float("nan"),
            "ood_fraction": ood_fraction(counts, pi),
            "return": rollout_return(lay, pi),
            "outcome": rollout_outcome(lay, pi),
        }
    out["optimal_return"] = rollout_return(lay, greedy_policy(value_iteration(lay)[1]))
    return out


def quality_sweep(
    qualities: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    layout_name: str = "open",
    n_episodes: int = 10,
    alpha: float = 1.0,
    counts_fn: CountsFn = coverage_counts,
    bc_fn: PolicyFn = bc_policy_from_counts,
    naive_fn: QFn = naive_offline_q,
    cql_fn: QFn = tabular_cql,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Demo 4: returns of BC, naive offline Q and CQL as the data goes from random to expert.

    Returns:
        ``qualities`` (K,); ``bc``, ``naive``, ``cql``, ``best_in_data`` (K,) means over
        seeds; the same with suffix ``_all`` as (K, n_seeds); ``optimal`` (float array).
    """
    if len(qualities) == 0 or len(seeds) == 0:
        raise ValueError("quality_sweep needs at least one quality and one seed.")
    lay = get_layout(layout_name)
    S, A = lay.n_states, lay.n_actions
    keys = ("bc", "naive", "cql", "best_in_data")
    res = {k: np.zeros((len(qualities), len(seeds))) for k in keys}
    grid = [(i, j) for i in range(len(qualities)) for j in range(len(seeds))]
    for i, j in tqdm(grid, desc="quality sweep", disable=not progress, leave=False):
        ds = quality_dataset(layout_name, qualities[i], n_episodes, seeds[j])
        res["bc"][i, j] = rollout_return(lay, bc_fn(counts_fn(ds, S, A)))
        res["naive"][i, j] = rollout_return(lay, greedy_policy(naive_fn(ds, S, A, lay.gamma)))
        q_cql = cql_fn(ds, S, A, lay.gamma, alpha=alpha)
        res["cql"][i, j] = rollout_return(lay, greedy_policy(q_cql))
        res["best_in_data"][i, j] = ds.episode_returns().max()
    out: dict[str, np.ndarray] = {"qualities": np.asarray(qualities, dtype=np.float64)}
    for k in keys:
        out[k] = res[k].mean(axis=1)
        out[k + "_all"] = res[k]
    out["optimal"] = np.array(rollout_return(lay, greedy_policy(value_iteration(lay)[1])))
    return out


def alpha_sweep(
    alphas: Sequence[float] = (0.0, 0.1, 1.0, 10.0, 30.0, 100.0),
    layout_name: str = "stitch",
    dataset: OfflineDataset | None = None,
    counts_fn: CountsFn = coverage_counts,
    bc_fn: PolicyFn = bc_policy_from_counts,
    naive_fn: QFn = naive_offline_q,
    cql_fn: QFn = tabular_cql,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Return and mean unseen-action Q for each CQL weight α (α = 0 runs ``naive_fn``).

    The dataset defaults to :func:`stitching_dataset` on "stitch" and must be given for other
    layouts.

    Returns:
        ``alphas`` (K,), ``returns`` (K,), ``mean_q_unseen`` (K,), ``mean_q_seen`` (K,),
        ``bc_return`` and ``best_trajectory_return`` (float arrays).
    """
    if any(a < 0 for a in alphas) or len(alphas) == 0:
        raise ValueError(f"alphas must be a non-empty list of values >= 0, got {alphas}.")
    lay = get_layout(layout_name)
    if dataset is None:
        if lay.name != "stitch":
            raise ValueError("alpha_sweep: pass a dataset for layouts other than 'stitch'.")
        dataset = stitching_dataset()
    S, A = lay.n_states, lay.n_actions
    counts = counts_fn(dataset, S, A)
    seen, unseen = _seen_masks(counts)
    returns, q_unseen, q_seen = [], [], []
    for alpha in tqdm(alphas, desc="alpha sweep", disable=not progress, leave=False):
        if alpha == 0:
            q = naive_fn(dataset, S, A, lay.gamma)
        else:
            q = cql_fn(dataset, S, A, lay.gamma, alpha=alpha)
        returns.append(rollout_return(lay, greedy_policy(q)))
        q_unseen.append(q[unseen].mean() if unseen.any() else np.nan)
        q_seen.append(q[seen].mean())
    return {
        "alphas": np.asarray(alphas, dtype=np.float64),
        "returns": np.asarray(returns),
        "mean_q_unseen": np.asarray(q_unseen),
        "mean_q_seen": np.asarray(q_seen),
        "bc_return": np.array(rollout_return(lay, bc_fn(counts))),
        "best_trajectory_return": np.array(dataset.episode_returns().max()),
    }


def stitching(
    alpha: float = 1.0,
    dataset: OfflineDataset | None = None,
    counts_fn: CountsFn = coverage_counts,
    bc_fn: PolicyFn = bc_policy_from_counts,
    naive_fn: QFn = naive_offline_q,
    cql_fn: QFn = tabular_cql,
    layout_name: str = "stitch",
) -> dict[str, float]:
    """Exploration exercise: can offline RL beat every trajectory in its dataset?

    Returns:
        ``best_trajectory_return``, ``bc_return``, ``naive_q_return``, ``cql_return``,
        ``optimal_return`` (floats) on ``layout_name`` and ``dataset`` (default
        :func:`stitching_dataset`, for the "stitch" layout).
    """
    lay = get_layout(layout_name)
    if dataset is None and lay.name != "stitch":
        raise ValueError("stitching: pass a dataset for layouts other than 'stitch'.")
    S, A = lay.n_states, lay.n_actions
    ds = stitching_dataset() if dataset is None else dataset
    return {
        "best_trajectory_return": float(ds.episode_returns().max()),
        "bc_return": rollout_return(lay, bc_fn(counts_fn(ds, S, A))),
        "naive_q_return": rollout_return(lay, greedy_policy(naive_fn(ds, S, A, lay.gamma))),
        "cql_return": rollout_return(lay, greedy_policy(cql_fn(ds, S, A, lay.gamma, alpha=alpha))),
        "optimal_return": rollout_return(lay, greedy_policy(value_iteration(lay)[1])),
    }


def offline_policy_selection(
    layout_name: str = "stitch",
    dataset: OfflineDataset | None = None,
    seed: int = 0,
    alpha: float = 1.0,
    counts_fn: CountsFn = coverage_counts,
    bc_fn: PolicyFn = bc_policy_from_counts,
    naive_fn: QFn = naive_offline_q,
    cql_fn: QFn = tabular_cql,
    fqe_fn: QFn = fitted_q_evaluation,
) -> dict[str, Any]:
    """Rank candidate policies by their FQE value at the start state, using only the data.

    Candidates: "bc", "naive", "cql" and "random" (a fixed random action per state, from
    ``seed``). FQE is itself offline: it is trustworthy only for candidates that stay in the
    data (``ood_fraction == 0``), so both picks are reported.

    Returns:
        ``candidates``: {name: {"fqe_value", "true_value", "ood_fraction"}} (discounted values
        at the start state), ``true_best``, ``fqe_pick`` (over all candidates),
        ``fqe_pick_in_distribution`` (over candidates with ood_fraction 0), and
        ``picked_best`` / ``picked_best_in_distribution`` (True when that pick's true value is
        the best true value).
    """
    lay = get_layout(layout_name)
    if dataset is None:
        if lay.name != "stitch":
            raise ValueError("offline_policy_selection: pass a dataset for layouts other than "
                             "'stitch'.")  # fmt: skip
        dataset = stitching_dataset()
    S, A, gamma = lay.n_states, lay.n_actions, lay.gamma
    counts = counts_fn(dataset, S, A)
    policies = {
        "bc": np.asarray(bc_fn(counts), dtype=np.int64),
        "naive": greedy_policy(naive_fn(dataset, S, A, gamma)),
        "cql": greedy_policy(cql_fn(dataset, S, A, gamma, alpha=alpha)),
        "random": np.random.default_rng(seed).integers(A, size=S),
    }
    s0 = lay.start_state
    visited = counts.sum(axis=1) > 0
    candidates = {}
    for name, pi in policies.items():
        q_pi = fqe_fn(dataset, pi, S, A, gamma)
        chosen_seen = counts[np.arange(S), pi] > 0
        candidates[name] = {
            "fqe_value": float(q_pi[s0, pi[s0]]),
            "true_value": float(policy_evaluation(lay, pi)[s0]),
            "ood_fraction": float(np.mean(~chosen_seen[visited])),
        }
    best_true = max(c["true_value"] for c in candidates.values())
    in_dist = [k for k, c in candidates.items() if c["ood_fraction"] == 0.0] or list(candidates)
    fqe_pick = max(candidates, key=lambda k: candidates[k]["fqe_value"])
    fqe_pick_in = max(in_dist, key=lambda k: candidates[k]["fqe_value"])
    return {
        "candidates": candidates,
        "true_best": max(candidates, key=lambda k: candidates[k]["true_value"]),
        "fqe_pick": fqe_pick,
        "fqe_pick_in_distribution": fqe_pick_in,
        "picked_best": bool(np.isclose(candidates[fqe_pick]["true_value"], best_true)),
        "picked_best_in_distribution": bool(
            np.isclose(candidates[fqe_pick_in]["true_value"], best_true)
        ),
    }


def offline_to_online(
    layout_name: str = "stitch",
    n_episodes: int = 50,
    alpha: float = 1.0,
    seed: int = 0,
    dataset: OfflineDataset | None = None,
    cql_fn: QFn = tabular_cql,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Online fine-tuning: epsilon-greedy Q-learning started from the CQL table vs from zeros.

    Returns:
        ``from_cql`` and ``from_scratch``: (n_episodes,) returns per training episode.
    """
    lay = get_layout(layout_name)
    if dataset is None:
        if lay.name != "stitch":
            raise ValueError("offline_to_online: pass a dataset for layouts other than 'stitch'.")
        dataset = stitching_dataset()
    q_cql = cql_fn(dataset, lay.n_states, lay.n_actions, lay.gamma, alpha=alpha)
    _, from_cql = online_q_learning(lay, n_episodes, seed, q_init=q_cql, progress=progress)
    _, from_scratch = online_q_learning(lay, n_episodes, seed, progress=progress)
    return {"from_cql": from_cql, "from_scratch": from_scratch}


# ----------------------------------------------------------------------------- notebook signatures
# The notebook's questions 7-9 as the student writes them (argument names and order, result
# keys): the hidden checks call these for the expected values.
def alpha_experiment(
    dataset: OfflineDataset, layout_name: str, alphas: Sequence[float]
) -> dict[str, np.ndarray]:
    """Question 7: ``{"alphas", "returns", "ood_q"}`` from :func:`alpha_sweep`."""
    res = alpha_sweep(alphas, layout_name, dataset, progress=False)
    return {"alphas": res["alphas"], "returns": res["returns"], "ood_q": res["mean_q_unseen"]}


def quality_experiment(
    qualities: Sequence[float],
    seeds: Sequence[int],
    layout_name: str = "open",
    n_episodes: int = 4,
    alpha: float = 1.0,
) -> dict[str, np.ndarray]:
    """Question 8: ``{"qualities", "bc", "naive", "cql"}`` (means over seeds) from
    :func:`quality_sweep`."""
    res = quality_sweep(qualities, seeds, layout_name, n_episodes, alpha, progress=False)
    return {k: res[k] for k in ("qualities", "bc", "naive", "cql")}


def stitching_experiment(
    dataset: OfflineDataset, layout_name: str = "stitch", alpha: float = 1.0
) -> dict[str, float]:
    """Question 9: the four returns of :func:`stitching`."""
    res = stitching(alpha, dataset, layout_name=layout_name)
    keys = ("best_trajectory_return", "bc_return", "naive_q_return", "cql_return")
    return {k: res[k] for k in keys}
