"""The chapter's four interactive demos (ipywidgets) plus two guided plots.

Each demo takes the student's own functions as arguments, so what a student sees is what *their*
code does. Results are cached per slider value, so moving a slider back is instant, and sliders
that retrain something use ``continuous_update=False``. A demo whose student function is not
implemented yet shows a short note instead of a traceback.

Signatures of the functions passed in (the notebook's questions):

* ``coverage_fn(dataset, n_states, n_actions) -> counts (S, A)``
* ``offline_q_fn(dataset, n_states, n_actions, gamma, alpha=0.0) -> Q (S, A)``
* ``quality_experiment_fn(qualities, seeds, layout_name=..., n_episodes=..., alpha=...) -> dict``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from offline_rl import plotting
from offline_rl.behavior import narrow_expert_dataset, noisy_expert_policy, quality_dataset
from offline_rl.datasets import OfflineDataset, collect_dataset
from offline_rl.envs import GridLayout, get_layout, make_grid_env
from offline_rl.evaluation import fitted_q_evaluation
from offline_rl.online import online_q_learning
from offline_rl.planning import greedy_policy, policy_evaluation, rollout_return, value_iteration

__all__ = [
    "cql_demo",
    "distribution_shift_demo",
    "offline_to_online_plot",
    "online_vs_offline_demo",
    "policy_selection_table",
    "quality_demo",
    "replay_q_learning",
    "wait_for",
]


class NotImplementedYetError(RuntimeError):
    """A student function returned None or raised: the demo waits for it."""


#: The question that asks for each student function a demo calls (for the waiting line).
QUESTION_OF = {"coverage_counts": "q1", "offline_q_learning": "q3", "quality_experiment": "q8"}


def _call(fn: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    question = QUESTION_OF.get(name, "its question")
    try:
        out = fn(*args, **kwargs)
    except Exception as err:
        raise NotImplementedYetError(
            f"waiting for your code ({question}): {name} raised {type(err).__name__}: {err}"
        ) from err
    if out is None:
        raise NotImplementedYetError(f"waiting for your code ({question}): {name} returned None")
    return out


def _has_none(value: Any) -> bool:
    """None itself, or a dict/tuple/list holding a None (e.g. ``{"bc_loss": None}``)."""
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_none(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(_has_none(v) for v in value)
    return False


def wait_for(question: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` for a guided cell, or None while the student's code is missing.

    A guided cell runs support code on the student's functions. Before they are written (they
    return None, or raise), the cell prints one line, "waiting for your code (q7): ...", instead
    of a traceback from deep inside the support code, so Run All goes on to the end.
    """
    try:
        out = fn(*args, **kwargs)
    except Exception as err:
        print(f"waiting for your code ({question}): {type(err).__name__}: {err}"[:300])
        return None
    if _has_none(out):
        print(f"waiting for your code ({question}): a function you write still returns None.")
        return None
    return out


def _note(output: widgets.Output, message: str) -> None:
    with output:
        output.clear_output(wait=True)
        print(f"{message}. This demo runs on it: finish the question, then re-run this cell.")


def _show(fig: plt.Figure, output: widgets.Output) -> None:
    with output:
        output.clear_output(wait=True)
        display(fig)
    plt.close(fig)


def _describe(fig: plt.Figure) -> str:
    """The figure's axes titles, joined: the state the plot shows, as text."""
    return " · ".join(ax.get_title() for ax in fig.axes if ax.get_title())


def _interactive(control: widgets.Widget, draw: Callable[[Any], plt.Figure]) -> widgets.VBox:
    """A control, a caption and an output area redrawn by ``draw(value)``; cached per value.

    The box is returned, not displayed: the notebook cell's value shows it, exactly once. The
    caption repeats the figure's titles as text, so the state of the plot can be read without
    looking at pixels (screen readers, the browser tests).
    """
    output = widgets.Output()
    caption = widgets.HTML()
    caption.add_class("offline-rl-demo-state")
    cache: dict[Any, plt.Figure] = {}

    def redraw(change: Any = None) -> None:
        value = control.value
        try:
            if value not in cache:
                cache[value] = draw(value)
            caption.value = _describe(cache[value])
            _show(cache[value], output)
        except NotImplementedYetError as err:
            caption.value = str(err).split(":")[0]  # "waiting for your code (q1)"
            _note(output, str(err))

    control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([control, caption, output])


# --------------------------------------------------------------------------- Demo 1
def replay_q_learning(
    dataset: OfflineDataset, layout: str | GridLayout, n_sweeps: int = 200, lr: float = 0.5
) -> np.ndarray:
    """Online Q-learning's update replayed over a fixed dataset (no new interaction).

    ``Q(s,a) += lr (r + γ (1 - done) max_a' Q(s',a') - Q(s,a))`` for every transition, in
    order, ``n_sweeps`` times. Returns Q: (S, A); pairs not in the data stay 0.
    """
    lay = get_layout(layout)
    Q = np.zeros((lay.n_states, lay.n_actions))
    s, a, r = dataset.observations, dataset.actions, dataset.rewards.astype(np.float64)
    s2, done = dataset.next_observations, dataset.terminals
    for _ in range(n_sweeps):
        for i in range(len(dataset)):
            target = r[i] + lay.gamma * (0.0 if done[i] else Q[s2[i]].max())
            Q[s[i], a[i]] += lr * (target - Q[s[i], a[i]])
    return Q


def online_vs_offline_demo(
    coverage_fn: Callable[..., Any], layout_name: str = "open"
) -> widgets.VBox:
    """Demo 1: an online agent vs an offline agent whose dataset's coverage the slider sets.

    The offline data come from an ε-noisy expert; ε = 0 follows one path, larger ε covers more.
    """
    lay = get_layout(layout_name)
    _, online_returns = online_q_learning(lay, n_episodes=300, seed=0, progress=False)
    optimal = rollout_return(lay, greedy_policy(value_iteration(lay)[1]))

    def draw(epsilon: float) -> plt.Figure:
        data = collect_dataset(
            make_grid_env(lay), noisy_expert_policy(lay, epsilon), 10, seed=0, progress=False
        )
        counts = np.asarray(
            _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
        )
        q_off = replay_q_learning(data, lay)
        policy = greedy_policy(q_off)
        covered = float(np.mean(counts > 0))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        plotting.draw_grid(
            axes[0],
            lay,
            counts=counts.sum(axis=1),
            policy=policy,
            title=f"behavior ε = {epsilon:g}: {covered:.0%} of (s, a) pairs covered",
        )
        window = 10
        smooth = np.convolve(online_returns, np.ones(window) / window, mode="valid")
        plotting.plot_curves(
            axes[1],
            np.arange(smooth.shape[0]),
            {"online Q-learning": smooth},
            xlabel="episode of interaction",
            ylabel="return",
        )
        axes[1].axhline(rollout_return(lay, policy), color="C1", ls="--", label="offline agent")
        axes[1].axhline(optimal, color="gray", ls=":", label="optimal")
        axes[1].legend(loc="lower right")
        fig.tight_layout()
        return fig

    slider = widgets.FloatSlider(
        value=0.0,
        min=0.0,
        max=1.0,
        step=0.1,
        continuous_update=False,
        description="behavior ε",
        readout_format=".1f",
    )
    return _interactive(slider, draw)


# --------------------------------------------------------------------------- Demos 2 and 3
def _cliff_data(epsilon: float) -> OfflineDataset:
    return narrow_expert_dataset("cliff", n_episodes=20, epsilon=epsilon, seed=0)


def _seen_unseen(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    visited = counts.sum(axis=1, keepdims=True) > 0
    return (counts > 0), (counts == 0) & visited


def _outcome(lay: GridLayout, policy: np.ndarray) -> str:
    ret = rollout_return(lay, policy)
    if ret <= min(lay.pits.values(), default=0.0):
        return f"return {ret:g}: walks into the lava"
    if not lay.goals or ret <= -lay.horizon * lay.step_cost + 1e-9:
        return f"return {ret:g}: never reaches the goal"
    return f"return {ret:g}: reaches the goal"


def distribution_shift_demo(
    offline_q_fn: Callable[..., Any], coverage_fn: Callable[..., Any]
) -> widgets.VBox:
    """Demo 2: naive offline Q on the cliff's narrow expert data; the slider adds noise."""
    lay = get_layout("cliff")
    q_true = value_iteration(lay)[1]

    def draw(epsilon: float) -> plt.Figure:
        data = _cliff_data(epsilon)
        counts = np.asarray(
            _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
        )
        q = np.asarray(
            _call(
                offline_q_fn,
                "offline_q_learning",
                data,
                lay.n_states,
                lay.n_actions,
                lay.gamma,
                alpha=0.0,
            )
        )
        policy = greedy_policy(q)
        # The two 3 x 10 grids stacked on the left, the scatter on the right: at Lab's default
        # width a single row of three panels shrank the count labels below readability.
        fig = plt.figure(figsize=(11, 5.6))
        grid = fig.add_gridspec(2, 2, width_ratios=[1.5, 1])
        axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[:, 1])]
        axes.append(fig.add_subplot(grid[1, 0]))
        plotting.draw_grid(
            axes[0],
            lay,
            counts=counts.sum(axis=1),
            title=f"ε = {epsilon:g}: dataset visits per state",
        )
        plotting.plot_q_seen_vs_unseen(axes[1], q, counts, q_true, title="learned vs true Q")
        plotting.draw_grid(
            axes[2], lay, policy=policy, title="greedy policy: " + _outcome(lay, policy)
        )
        fig.tight_layout()
        return fig

    slider = widgets.FloatSlider(
        value=0.0,
        min=0.0,
        max=0.5,
        step=0.1,
        continuous_update=False,
        description="data noise ε",
        readout_format=".1f",
    )
    return _interactive(slider, draw)


def cql_demo(offline_q_fn: Callable[..., Any], coverage_fn: Callable[..., Any]) -> widgets.VBox:
    """Demo 3: the same cliff data, trained with the CQL term; the slider sets α."""
    lay = get_layout("cliff")
    data = _cliff_data(0.0)

    def draw(alpha: float) -> plt.Figure:
        counts = np.asarray(
            _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
        )
        q = np.asarray(
            _call(
                offline_q_fn,
                "offline_q_learning",
                data,
                lay.n_states,
                lay.n_actions,
                lay.gamma,
                alpha=alpha,
            )
        )
        seen, unseen = _seen_unseen(counts)
        policy = greedy_policy(q)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [2, 1]})
        plotting.draw_grid(
            axes[0], lay, policy=policy, title=f"α = {alpha:g}: " + _outcome(lay, policy)
        )
        plotting.plot_bars(
            axes[1],
            {"seen (s, a)": float(q[seen].mean()), "unseen (s, a)": float(q[unseen].mean())},
            ylabel="mean learned Q(s, a)",
        )
        axes[1].set_title("mean learned Q")
        fig.tight_layout()
        return fig

    slider = widgets.SelectionSlider(
        options=[0.0, 0.01, 0.1, 1.0, 10.0, 100.0],
        value=0.0,
        continuous_update=False,
        description="CQL α",
    )
    return _interactive(slider, draw)


# --------------------------------------------------------------------------- Demo 4
def quality_demo(
    quality_experiment_fn: Callable[..., Any],
    coverage_fn: Callable[..., Any],
    layout_name: str = "open",
    n_episodes: int = 4,
    seeds: tuple[int, ...] = (0, 1, 2),
) -> widgets.VBox:
    """Demo 4: returns of BC, naive Q and CQL against the fraction of expert data."""
    lay = get_layout(layout_name)
    qualities = [0.0, 0.25, 0.5, 0.75, 1.0]
    sweep: dict[str, Any] = {}

    def draw(quality: float) -> plt.Figure:
        if not sweep:
            sweep.update(
                _call(
                    quality_experiment_fn,
                    "quality_experiment",
                    qualities,
                    list(seeds),
                    layout_name=layout_name,
                    n_episodes=n_episodes,
                )
            )
        data = quality_dataset(layout_name, quality, n_episodes, seeds[0])
        counts = np.asarray(
            _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
        )
        visited = int(np.sum(counts.sum(axis=1) > 0))
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        curves = {"BC": sweep["bc"], "naive Q": sweep["naive"], "CQL": sweep["cql"]}
        plotting.plot_curves(
            axes[0],
            np.asarray(qualities),
            curves,
            xlabel="fraction of expert episodes",
            ylabel=f"return (mean of {len(seeds)} seeds)",
        )
        axes[0].axvline(quality, color="gray", ls=":")
        plotting.draw_grid(
            axes[1],
            lay,
            counts=counts.sum(axis=1),
            title=f"quality {quality:.2f}: the data visit {visited} states",
        )
        fig.tight_layout()
        return fig

    slider = widgets.SelectionSlider(
        options=qualities, value=0.5, continuous_update=False, description="data quality"
    )
    return _interactive(slider, draw)


# --------------------------------------------------------------------------- guided parts
def policy_selection_table(
    dataset: OfflineDataset, layout: str | GridLayout, candidates: dict[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Offline policy selection: FQE's estimate of V^π(start) next to the true value.

    Returns:
        {name: (fqe_estimate, true_value)}; also prints a ranked table.
    """
    lay = get_layout(layout)
    rows = {}
    for name, policy in candidates.items():
        policy = np.asarray(policy, dtype=np.int64)
        q_hat = fitted_q_evaluation(dataset, policy, lay.n_states, lay.n_actions, lay.gamma)
        start = lay.start_state
        true = policy_evaluation(lay, policy)[start]
        rows[name] = (float(q_hat[start, policy[start]]), float(true))
    print(f"{'policy':<12}{'FQE estimate':>14}{'true value':>12}")
    for name, (est, true) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        print(f"{name:<12}{est:>14.2f}{true:>12.2f}")
    best_fqe = max(rows, key=lambda k: rows[k][0])
    best_true = max(rows, key=lambda k: rows[k][1])
    print(f"FQE picks {best_fqe!r}; the truly best is {best_true!r}.")
    return rows


def offline_to_online_plot(
    layout_name: str, q_init: np.ndarray, n_episodes: int = 100
) -> plt.Figure:
    """Online Q-learning started from zeros vs from an offline Q-table (same seed)."""
    lay = get_layout(layout_name)
    _, from_zero = online_q_learning(lay, n_episodes, seed=0, progress=False)
    _, from_offline = online_q_learning(
        lay, n_episodes, seed=0, q_init=np.asarray(q_init), progress=False
    )
    fig, ax = plt.subplots(figsize=(7, 3.2))
    plotting.plot_curves(
        ax,
        np.arange(n_episodes),
        {"online from zeros": from_zero, "online from offline CQL": from_offline},
        xlabel="online episode",
        ylabel="return",
    )
    fig.tight_layout()
    plt.close(fig)  # returned, not shown: the cell's value displays it once
    return fig
