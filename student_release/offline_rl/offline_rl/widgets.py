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

import asyncio
import base64
import functools
import io
import re
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from offline_rl import plotting
from offline_rl.behavior import narrow_expert_dataset, quality_dataset, random_policy
from offline_rl.datasets import OfflineDataset, collect_dataset
from offline_rl.envs import GridLayout, get_layout, make_grid_env
from offline_rl.evaluation import fitted_q_evaluation
from offline_rl.online import online_q_learning
from offline_rl.planning import greedy_policy, policy_evaluation, rollout_return, value_iteration

__all__ = [
    "DEMO1_SEEDS",
    "DEMO1_SIZES",
    "coverage_sweep",
    "cql_demo",
    "distribution_shift_demo",
    "offline_to_online_plot",
    "online_vs_offline_demo",
    "policy_selection",
    "policy_selection_table",
    "quality_demo",
    "quality_learning_curves",
    "replay_q_learning",
    "wait_for",
]


class NotImplementedYetError(RuntimeError):
    """A student function returned None or raised: the demo waits for it."""


#: The question that asks for each student function a demo calls (for the waiting line).
QUESTION_OF = {"coverage_counts": "q1", "offline_q_learning": "q3", "quality_experiment": "q8"}


def _call(fn: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    question = QUESTION_OF.get(name, "its question")
    # The line names the question and nothing else: an exception raised deep in support code
    # ("cannot unpack non-iterable NoneType object") says nothing about what to write, and the
    # question's grader.check cell says precisely what is wrong.
    try:
        out = fn(*args, **kwargs)
    except Exception as err:
        raise NotImplementedYetError(f"waiting for your code ({question})") from err
    if out is None:
        raise NotImplementedYetError(f"waiting for your code ({question})")
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


#: What a waiting line tells the student to do, after the question it names.
WAITING_ADVICE = "finish it and run its grader.check cell, then re-run this cell."


def wait_for(question: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` for a guided cell, or None while the student's code is missing.

    A guided cell runs support code on the student's functions. Before they are written (they
    return None, or raise), the cell prints one line, "waiting for your code (q7): ...", instead
    of a traceback from deep inside the support code, so Run All goes on to the end.
    """
    line = f"waiting for your code ({question}): {WAITING_ADVICE}"
    try:
        out = fn(*args, **kwargs)
    except Exception as err:  # never the support code's exception: it names no question (see _call)
        if _raised_in_a_notebook_cell(err):
            line = (
                f"waiting for your code ({question}): your {question} code raised an error: "
                "run its grader.check cell to see it, then re-run this cell."
            )
        print(line)
        return None
    if _has_none(out):
        print(line)
        return None
    return out


#: Where IPython compiles a notebook cell: ipykernel's "/tmp/ipykernel_<pid>/<hash>.py", or the
#: terminal's "<ipython-input-...>". A frame there is the student's own code (or a guided cell).
_CELL_FILE = re.compile(r"ipykernel_\d+[/\\]\d+\.py$|^<ipython-input-")


def _raised_in_a_notebook_cell(err: BaseException) -> bool:
    """Whether ``err`` was raised by code in a notebook cell (the student's function), not by the
    support code, numpy or torch. A TypeError/AttributeError about None is an unfinished stub's
    None reaching code that needs a value: that is "waiting", not the student's error."""
    if isinstance(err, (TypeError, AttributeError)) and "NoneType" in str(err):
        return False
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and _CELL_FILE.search(frames[-1].filename) is not None


def _note(output: widgets.Output, message: str) -> None:
    """Replace what ``output`` shows by one line (set in the kernel, as ``_show`` does)."""
    # The caption above already says "waiting for your code (qN)": say it once, add what to do.
    detail = message.split(": ", 1)[1] if ": " in message else ""
    text = (f"{detail[:1].upper()}{detail[1:]}. " if detail else "") + (
        "This demo runs on that code: finish the question, then re-run this cell.\n"
    )
    output.outputs = ({"output_type": "stream", "name": "stdout", "text": text},)


@dataclass(frozen=True)
class _Frame:
    """One drawn state of a demo, kept per slider value: moving back to it re-sends the bytes."""

    png: bytes
    """The figure as PNG, rendered once (a matplotlib figure re-renders on every display)."""
    caption: str
    """The figure's titles and legend colours as text (``_describe``), for the caption."""


class _DemoFigure(Figure):
    """A demo's figure: drawn by Agg, outside pyplot (so no cell shows it by itself, and it is
    kept for the demo's life instead of closed after each frame)."""

    blit: _Blit | None = None
    """Set by a demo whose moves change only some axes: :func:`_render` then redraws those."""


def _figure(figsize: tuple[float, float]) -> _DemoFigure:
    """A new :class:`_DemoFigure` on an Agg canvas."""
    fig = _DemoFigure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _overlay(ax: Axes) -> Axes:
    """A transparent axes over ``ax``, sharing its data limits, for what a move changes there
    (Demo 1's circle, Demo 4's marker line): with the overlay drawn last, a move redraws only
    the overlay, never ``ax``'s ticks and legend (:class:`_Blit`)."""
    fig = ax.get_figure()
    assert isinstance(fig, Figure) and ax.get_subplotspec() is not None
    over = fig.add_subplot(ax.get_subplotspec(), sharex=ax, sharey=ax)
    over.set_axis_off()  # no frame, ticks or background: only its artists are drawn
    return over


@dataclass
class _Blit:
    """Which axes of a demo's figure a move changes: after the first frame only these are
    drawn again, on a copy of the other axes' pixels (matplotlib's blitting).

    A full draw of Demo 1's figure was 0.2 CPU-s, mostly the tick labels of the two panels a
    move does not change. The axes given are drawn after all the others in every frame (the
    copy holds the others), so a frame is the same picture a full draw gives when no axes
    here overlaps another one (``tests/test_widgets.py`` compares the pixels).
    """

    axes: list[Axes]
    """The axes a move changes (each in its own place, or an :func:`_overlay`)."""
    background: Any = field(default=None, repr=False)
    """The other axes' pixels (an Agg ``BufferRegion``), None until the first frame or after
    :meth:`changed`."""

    def changed(self) -> None:
        """Something outside ``axes`` changed (Demo 4's curves while they fill in)."""
        self.background = None

    def draw(self, fig: Figure) -> None:
        """Draw ``fig`` on its canvas: the other axes only if they changed, then ``axes``."""
        canvas = fig.canvas
        assert isinstance(canvas, FigureCanvasAgg)
        if self.background is None:
            for ax in self.axes:
                ax.set_visible(False)
            try:
                canvas.draw()
            finally:
                for ax in self.axes:
                    ax.set_visible(True)
            self.background = canvas.copy_from_bbox(fig.bbox)
        else:
            canvas.restore_region(self.background)
        renderer = canvas.get_renderer()
        for ax in self.axes:
            ax.draw(renderer)


def _render(fig: Figure) -> _Frame:
    """Render ``fig`` to PNG once.

    One draw at the figure's size and dpi: the inline backend's ``display(fig)`` draws it twice
    (``bbox_inches="tight"`` first measures, then renders) and again on every display. The
    demos' figures are laid out by ``_interactive`` (``plotting.FixedLayout``), so nothing lies
    outside the canvas; a figure with a ``blit`` (``_DemoFigure``) redraws only the axes a
    move changes. zlib level 1: a third of level 6's encoding time for ~8 % more bytes (80 kB, sent
    once per value to a local browser).
    """
    blit = getattr(fig, "blit", None)
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg), "a demo's figure comes from _figure"
    if blit is None:
        canvas.draw()
    else:
        blit.draw(fig)
    buffer = io.BytesIO()
    # What savefig writes after its draw (metadata, dpi), from the pixels drawn above.
    matplotlib.image.imsave(buffer, canvas.buffer_rgba(), format="png", dpi=fig.dpi,
                            pil_kwargs={"compress_level": 1})  # fmt: skip
    return _Frame(buffer.getvalue(), _describe(fig))


def _show(frame: _Frame, output: widgets.Output) -> None:
    """Replace what ``output`` shows by the frame's figure.

    The widget's ``outputs`` are set here, in the kernel, in one message, rather than captured
    from ``with output: display(...)`` (where the front end sends the widget's whole state, the
    PNG, back to the kernel after every display). With the capture, nbclient's Run All of the
    solution (benchmarks/profile_notebook.py) waited out its 600 s timeout after a demo cell in
    3 runs of 4 while issue 24 was profiled (cause not pinned down); set directly, in none of
    2 runs, and the browser test's JupyterLab shows the same figures.
    """
    image = base64.b64encode(frame.png).decode("ascii")
    output.outputs = (
        {"output_type": "display_data", "metadata": {},
         "data": {"image/png": image, "text/plain": frame.caption or "a demo figure"}},
    )  # fmt: skip


def _describe(fig: Figure) -> str:
    """The figure's axes titles, joined, then its legends' colours: the state the plot shows,
    as text (screen readers; the browser test compares the methods' colours across figures)."""
    parts = [ax.get_title() for ax in fig.axes if ax.get_title()]
    colours = {k: v for ax in fig.axes for k, v in plotting.legend_colours(ax).items()}
    if colours:
        parts.append("colours: " + ", ".join(f"{k} {v}" for k, v in colours.items()))
    return " · ".join(parts)


def _plural(n: int, word: str) -> str:
    """ "1 episode", "4 episodes"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _in_notebook() -> bool:
    """True inside an IPython kernel (where ``display`` shows widgets), False in plain Python."""
    from IPython import get_ipython

    return get_ipython() is not None


def _status(message: str) -> Any:
    """Show ``message`` under the cell now; returns a handle whose ``update`` replaces it
    (None outside a notebook, where nothing is shown)."""
    if not _in_notebook():
        return None
    return display(widgets.HTML(f"<i>{message}</i>"), display_id=True)


#: Seconds a slider waits after a move for the next one before drawing (a held arrow key:
#: about 30 ms apart; quick presses, and Playwright's on a loaded machine: over 100 ms), so
#: that only the last value is drawn.
MOVE_SETTLE_S = 0.15


def _interactive(
    control: widgets.Widget,
    draw: Callable[[Any], Figure],
    hint: str,
    busy: str | None = None,
    fill: Callable[[], Iterator[str]] | None = None,
) -> widgets.VBox:
    """A sentence, a control, a caption and an output area redrawn by ``draw(value)``; each
    value's figure is rendered once and kept (``_Frame``), so a move back is only a re-send.

    The box is returned, not displayed: the notebook cell's value shows it, exactly once. The
    caption repeats the figure's titles as text, so the state of the plot can be read without
    looking at pixels (screen readers, the browser tests).

    Args:
        hint: one sentence shown above the control: what to look for when moving it.
        busy: for a demo whose first figure takes more than a second: a line shown while it is
            computed ("computing ... (about N s)"), replaced by the demo when it is ready.
        fill: for a demo whose first figure needs several seconds of the student's code
            (Demo 4): a generator that does that work in parts and yields after each one how
            far it is ("2 of 5 qualities"). In a notebook the demo is then shown at once, with
            ``busy`` and that progress above the figure, and redrawn after every part, so the
            student sees the figure fill in instead of waiting for all of it.
    """
    output = widgets.Output()
    caption = widgets.HTML()
    caption.add_class("offline-rl-demo-state")
    progress = widgets.HTML()
    progress.layout.display = "none"
    cache: dict[Any, _Frame] = {}
    layout = plotting.FixedLayout()
    drawing = [False]  # a figure is being drawn: a move now is picked up by that draw's loop
    scheduled: list[Any] = []  # the pending deferred draw (an asyncio TimerHandle), if any

    def render(value: Any) -> _Frame:
        # Titles at a fixed height: matplotlib otherwise measures every axis' tick labels on
        # each draw to lift a title over any at the top (there are none here), an eighth of a
        # move's CPU time. The same pixels (PNG bytes compared, Demo 2).
        with plt.rc_context({"axes.titley": 1.0}):
            return _render(layout.apply(draw(value)))

    def show(frame: _Frame) -> None:
        caption.value = frame.caption
        _show(frame, output)

    def waiting(err: NotImplementedYetError) -> None:
        caption.value = str(err).split(":")[0]  # "waiting for your code (q1)"
        _note(output, str(err))

    def redraw() -> None:
        """Draw and show the slider's value; if it moves meanwhile, draw the new value next.

        A move that arrives while a figure is drawn (handled inside the draw, or by another
        thread) must not be overtaken by that figure: session 7 saw Demo 1 show 8 episodes
        with the slider at 16 after two quick key presses. So nothing is shown unless the
        slider still holds the value drawn, and a move during a draw only flags it.
        """
        if drawing[0]:
            return  # the loop below draws the slider's newest value when this figure is done
        drawing[0] = True
        try:
            while True:
                value = control.value
                try:
                    if value not in cache:
                        cache[value] = render(value)
                    if control.value != value:
                        continue  # moved during the draw: the drawn frame stays cached
                    show(cache[value])
                except NotImplementedYetError as err:
                    waiting(err)
                return
        finally:
            drawing[0] = False

    def deferred() -> None:
        scheduled.clear()
        redraw()

    def moved(change: Any = None) -> None:
        """A move: in a kernel, draw after the moves that come with it (``MOVE_SETTLE_S``).

        Each key press on a slider is a move of its own, sent as soon as the kernel reports
        the previous one handled; drawing each (0.3-0.6 s) made a 3-press move cost 3 figures.
        The draw waits until no move came for ``MOVE_SETTLE_S`` and then draws the last value
        only. Outside a kernel (plain Python, tests; even where an event loop runs, as
        Playwright's does in a test process) it draws at once.
        """
        try:
            loop = asyncio.get_running_loop() if _in_notebook() else None
        except RuntimeError:
            loop = None
        if loop is None:
            redraw()
            return
        for handle in scheduled:
            handle.cancel()
        scheduled[:] = [loop.call_later(MOVE_SETTLE_S, deferred)]

    sentence = widgets.HTML(f"<b>What to look for:</b> {hint}")
    box = widgets.VBox([sentence, control, progress, caption, output])
    live = None
    if fill is not None and _in_notebook():
        live = display(box, display_id=True)  # shown now; the cell's value takes its place
        progress.layout.display = None
        try:
            for done in fill():
                progress.value = f"<i>{busy or 'computing'} {done}</i>"
                show(render(control.value))  # partial: not cached
        except NotImplementedYetError as err:
            waiting(err)
        progress.layout.display = "none"
        progress.value = ""
    status = _status(busy) if busy and live is None else None
    control.observe(moved, names="value")
    redraw()
    for handle in (status, live):
        if handle is not None:
            handle.update(widgets.HTML(""))  # the demo takes its place, as the cell's value
    return box


# --------------------------------------------------------------------------- Demo 1
def replay_q_learning(
    dataset: OfflineDataset, layout: str | GridLayout, n_sweeps: int = 200, lr: float = 0.5
) -> np.ndarray:
    """Online Q-learning's update replayed over a fixed dataset (no new interaction).

    ``Q(s,a) += lr (r + γ (1 - done) max_a' Q(s',a') - Q(s,a))`` for every transition, in
    order, ``n_sweeps`` times. Returns Q: (S, A); pairs not in the data stay 0.
    """
    lay = get_layout(layout)
    gamma = lay.gamma
    # Plain Python floats and lists: each update touches one entry, and numpy's per-call cost
    # (indexing a scalar, a 4-element max) was 20x the arithmetic. Same order, same values.
    Q = [[0.0] * lay.n_actions for _ in range(lay.n_states)]
    steps = list(
        zip(
            dataset.observations.tolist(),
            dataset.actions.tolist(),
            dataset.rewards.astype(np.float64).tolist(),
            dataset.next_observations.tolist(),
            dataset.terminals.tolist(),
            strict=True,
        )
    )
    # V[s] = max(Q[s]), kept up to date instead of taken for every update's next state: a
    # row's max changes only when its updated entry rises above it or was it. Same values.
    V = [0.0] * lay.n_states
    for _ in range(n_sweeps):
        for s, a, r, s2, done in steps:
            row = Q[s]
            old = row[a]
            new = old + lr * ((r if done else r + gamma * V[s2]) - old)
            row[a] = new
            if new >= V[s]:
                V[s] = new
            elif old == V[s]:
                V[s] = max(row)
    return np.array(Q)


#: Demo 1's settings: the slider's dataset sizes (episodes of a uniformly random behavior
#: policy) and the seeds averaged at each size. The claim tests run exactly these.
DEMO1_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
DEMO1_SEEDS: tuple[int, ...] = tuple(range(8))


def _first_episodes(data: OfflineDataset, n: int) -> OfflineDataset:
    """The first ``n`` episodes of ``data`` (so smaller datasets are subsets of larger ones)."""
    starts = data.episode_starts
    end = int(starts[n]) if n < len(starts) else len(data)
    fields = data.as_dict()
    cut = {k: v[:end].copy() for k, v in fields.items() if k != "episode_starts"}
    return OfflineDataset(**cut, episode_starts=starts[:n].copy())


def _live_pairs(lay: GridLayout) -> np.ndarray:
    """(S,) mask of the cells where an agent can act (not a wall, goal or pit)."""
    cells = [lay.coords(s) for s in range(lay.n_states)]
    return np.array([lay.terminal_reward(c) is None and c not in lay.walls for c in cells])


@dataclass
class _Seed0:
    """Demo 1's left panel for every slider value, kept from the sweep (not recomputed)."""

    stream: OfflineDataset
    """Seed 0's episodes, as many as the largest size: each size's data are a prefix of it."""
    policies: list[np.ndarray]
    """Per size, the greedy policy (S,) of the offline agent replayed on that prefix."""


@dataclass(frozen=True)
class _Replays:
    """Demo 1's sweep without the student's code: the data and the offline agents trained on
    them depend only on the layout, sizes and seeds, so one kernel computes them once."""

    streams: tuple[OfflineDataset, ...]
    """Per seed, its episodes, as many as the largest size (each size's data: a prefix)."""
    policies: tuple[tuple[np.ndarray, ...], ...]
    """Per seed, per size, the greedy policy (S,) of :func:`replay_q_learning` on the prefix."""
    returns: np.ndarray
    """(n_sizes, n_seeds) those policies' returns."""


@functools.lru_cache(maxsize=4)
def _replays(layout_name: str, sizes: tuple[int, ...], seeds: tuple[int, ...]) -> _Replays:
    """Collect and replay every (size, seed) of Demo 1 (~0.6 CPU-s for the demo's 7 x 8)."""
    lay = get_layout(layout_name)
    env = make_grid_env(lay)
    streams, policies = [], []
    returns = np.zeros((len(sizes), len(seeds)))
    for j, seed in enumerate(seeds):
        stream = collect_dataset(env, random_policy(), max(sizes), seed, progress=False)
        per_size = []
        for i, n in enumerate(sizes):
            per_size.append(greedy_policy(replay_q_learning(_first_episodes(stream, n), lay, 60)))
            returns[i, j] = rollout_return(lay, per_size[-1])
        streams.append(stream)
        policies.append(tuple(per_size))
    for array in (returns, *(p for per_size in policies for p in per_size)):
        array.flags.writeable = False  # shared by every later call: nobody may change them
    return _Replays(tuple(streams), tuple(policies), returns)


def _coverage_sweep(
    coverage_fn: Callable[..., Any],
    layout_name: str,
    sizes: tuple[int, ...],
    seeds: tuple[int, ...],
) -> tuple[dict[str, np.ndarray], _Seed0]:
    """:func:`coverage_sweep`, plus the first seed's data and policies (Demo 1 draws them).

    Only the coverage is the student's (their ``coverage_fn`` on each dataset); the data and
    the offline agents come from :func:`_replays`, computed once per kernel.
    """
    if not seeds:
        raise ValueError("coverage_sweep needs at least one seed.")
    lay = get_layout(layout_name)
    live = _live_pairs(lay)
    replays = _replays(layout_name, sizes, seeds)
    coverage = np.zeros((len(sizes), len(seeds)))
    for j, stream in enumerate(replays.streams):
        for i, n in enumerate(sizes):
            data = _first_episodes(stream, n)  # a copy: the student's function may change it
            counts = np.asarray(
                _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
            )
            coverage[i, j] = float(np.mean(counts[live] > 0))
    sweep = {"sizes": np.asarray(sizes), "coverage": coverage, "returns": replays.returns.copy()}
    return sweep, _Seed0(replays.streams[0], list(replays.policies[0]))


def coverage_sweep(
    coverage_fn: Callable[..., Any],
    layout_name: str = "open",
    sizes: tuple[int, ...] = DEMO1_SIZES,
    seeds: tuple[int, ...] = DEMO1_SEEDS,
) -> dict[str, np.ndarray]:
    """Demo 1's experiment: one fixed behavior policy (uniformly random), more or less of its data.

    Only the dataset size changes between settings, and the datasets of one seed are nested
    (the first n episodes of the same stream), so coverage can only grow with the size. The
    offline agent is :func:`replay_q_learning` on that data; its return is the greedy rollout's.

    Returns:
        ``sizes`` (K,); ``coverage`` and ``returns`` (K, n_seeds): the fraction of the live
        (s, a) pairs in the data and the offline agent's return.
    """
    return _coverage_sweep(coverage_fn, layout_name, tuple(sizes), tuple(seeds))[0]


@functools.lru_cache(maxsize=4)
def _online_agent(layout_name: str) -> tuple[float, np.ndarray]:
    """Demo 1's online agent (no student code, so once per kernel): its greedy return after
    300 episodes and its return per episode (E,), read-only."""
    lay = get_layout(layout_name)
    q_online, online_returns = online_q_learning(lay, n_episodes=300, seed=0, progress=False)
    online_returns = np.asarray(online_returns)
    online_returns.flags.writeable = False
    return rollout_return(lay, greedy_policy(q_online)), online_returns


class _Demo1Figure:
    """Demo 1's figure, made once: seed 0's data and greedy policy (left, what a move changes),
    the offline agents' mean return against coverage with a circle at the slider's size
    (middle: the circle moves) and the online agent's learning curve (right)."""

    def __init__(
        self,
        lay: GridLayout,
        sweep: dict[str, np.ndarray],
        online_final: float,
        online_returns: np.ndarray,
    ) -> None:
        self.sweep = sweep
        self.cov, self.ret = sweep["coverage"].mean(axis=1), sweep["returns"].mean(axis=1)
        self.fig = _figure((15, 3.8))
        axes = self.fig.subplots(1, 3)
        self.grid = plotting.GridPlot(axes[0], lay, heat="counts", policy=True,
                                      heat_label="visits to the state (seed 0's data)")  # fmt: skip
        label = f"offline agent (mean of {len(DEMO1_SEEDS)} seeds)"
        # Demo 1's offline agent is naive offline Q-learning: the naive colour of every figure.
        axes[1].plot(100 * self.cov, self.ret, "o-", color=plotting.METHOD_COLOURS["naive"],
                     label=label)  # fmt: skip
        axes[1].axhline(online_final, color=plotting.METHOD_COLOURS["online"], ls="--",
                        label="online agent (after 300 episodes)")  # fmt: skip
        axes[1].set_xlabel("coverage of the (s, a) pairs (%)")
        axes[1].set_ylabel("offline agent's return")
        axes[1].set_title("more coverage, better offline agent")
        axes[1].legend(loc="lower right", fontsize=8)
        self.circle = _overlay(axes[1]).plot([], [], "o", ms=12, mfc="none", color="k")[0]
        window = 10
        smooth = np.convolve(online_returns, np.ones(window) / window, mode="valid")
        plotting.plot_curves(
            axes[2], np.arange(smooth.shape[0]), {"online Q-learning": smooth},
            xlabel="episode of interaction", ylabel="return (10-episode mean)",
        )  # fmt: skip
        # The title says whose curve it is, in the online agent's colour (middle panel's
        # legend): a legend here too named purple twice in the caption (session 9).
        axes[2].get_legend().remove()
        axes[2].set_title("the online agent collects its own data")
        assert self.grid.colorbar is not None
        self.fig.blit = _Blit([axes[0], self.grid.colorbar.ax, self.circle.axes])

    def show(self, i: int, n_episodes: int, counts: np.ndarray, policy: np.ndarray) -> Figure:
        """The figure at the slider's ``i``-th size: seed 0's ``counts`` (S,) and ``policy``."""
        title = (f"seed 0, {_plural(n_episodes, 'episode')}: "
                 f"{self.sweep['coverage'][i, 0]:.0%} covered")  # fmt: skip
        self.grid.update(counts, policy, title)
        self.circle.set_data([100 * self.cov[i]], [self.ret[i]])
        return self.fig


def online_vs_offline_demo(
    coverage_fn: Callable[..., Any], layout_name: str = "open"
) -> widgets.VBox:
    """Demo 1: an online agent vs offline agents whose data the slider makes larger.

    The behavior policy is fixed (uniformly random); the slider sets how many of its episodes
    the offline agent gets, which moves coverage and nothing else.
    """
    lay = get_layout(layout_name)
    online_final, online_returns = _online_agent(layout_name)
    sweep: dict[str, np.ndarray] = {}
    seed0: list[_Seed0] = []
    scene: list[_Demo1Figure] = []  # made on the first draw, then updated in place

    def draw(n_episodes: int) -> Figure:
        if not sweep:
            result, first = _coverage_sweep(coverage_fn, layout_name, DEMO1_SIZES, DEMO1_SEEDS)
            sweep.update(result)
            seed0.append(first)
        i = list(DEMO1_SIZES).index(n_episodes)
        # Seed 0's data at this size and the offline agent trained on it, from the sweep: a move
        # only draws (collecting and replaying again gave the same arrays, at 10x the cost).
        stream, policy = _first_episodes(seed0[0].stream, n_episodes), seed0[0].policies[i]
        counts = _state_counts(coverage_fn, stream, lay)  # the student's code, before drawing
        if not scene:
            scene.append(_Demo1Figure(lay, sweep, online_final, online_returns))
        return scene[0].show(i, n_episodes, counts, policy)

    slider = widgets.SelectionSlider(
        options=list(DEMO1_SIZES),
        value=4,
        continuous_update=False,
        description="episodes of data",
        style={"description_width": "initial"},
    )
    hint = (
        "more episodes of the same random behavior cover more (s, a) pairs; the offline agent's "
        "return (middle) stays near −30 until about half the pairs are covered and reaches the "
        "online agent's only above 90 %."
    )
    busy = (
        f"Demo 1: replaying Q-learning on {len(DEMO1_SIZES) * len(DEMO1_SEEDS)} datasets "
        "(about 2 s on a quiet 2-core machine)…"
    )
    return _interactive(slider, draw, hint, busy)


def _state_counts(
    coverage_fn: Callable[..., Any], data: OfflineDataset, lay: GridLayout
) -> np.ndarray:
    """The student's counts for ``data``, per state (for the heatmap)."""
    counts = _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
    return np.asarray(counts).sum(axis=1)


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


class _Demo2Figure:
    """Demo 2's figure, made once: the data's visits (top left), learned against true Q (right)
    and the greedy policy (bottom left). A move changes all three: no blitting."""

    def __init__(self, lay: GridLayout) -> None:
        # The two 3 x 10 grids stacked on the left, the scatter on the right: at Lab's default
        # width a single row of three panels shrank the count labels below readability.
        self.fig = _figure((11, 5.6))
        grid = self.fig.add_gridspec(2, 2, width_ratios=[1.5, 1])
        axes = [self.fig.add_subplot(grid[0, 0]), self.fig.add_subplot(grid[:, 1])]
        axes.append(self.fig.add_subplot(grid[1, 0]))
        self.parts = (
            plotting.GridPlot(axes[0], lay, heat="counts",
                              heat_label="visits (transitions from the state)"),
            plotting.SeenUnseenPlot(axes[1], with_truth=True, title="learned vs true Q"),
            plotting.GridPlot(axes[2], lay, policy=True),
        )  # fmt: skip


def distribution_shift_demo(
    offline_q_fn: Callable[..., Any], coverage_fn: Callable[..., Any]
) -> widgets.VBox:
    """Demo 2: naive offline Q on the cliff's narrow expert data; the slider adds noise."""
    lay = get_layout("cliff")
    q_true = value_iteration(lay)[1]
    scene: list[_Demo2Figure] = []  # made on the first draw, then updated in place

    def draw(epsilon: float) -> Figure:
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
        if not scene:
            scene.append(_Demo2Figure(lay))
        heat, scatter, arrows = scene[0].parts
        heat.update(counts, title=f"ε = {epsilon:g}: dataset visits per state")
        scatter.update(q, counts, q_true)
        arrows.update(policy=policy, title="greedy policy: " + _outcome(lay, policy))
        return scene[0].fig

    slider = widgets.FloatSlider(
        value=0.0,
        min=0.0,
        max=0.5,
        step=0.1,
        continuous_update=False,
        description="data noise ε",
        readout_format=".1f",
    )
    hint = (
        "ε is the chance of a random action at every step of all 20 episodes; noise shows some "
        "lava moves (red × at learned 0, true −100, turn into blue dots near the truth), but "
        "only luck shows every bad move on the greedy path (bottom left): up to ε = 0.2 it fails "
        "on every dataset seed we tried, above that on some, and on this one at every ε."
    )
    return _interactive(slider, draw, hint)


class _Demo3Figure:
    """Demo 3's figure, made once: the greedy policy on the cliff (left) and the mean learned Q
    of the seen and unseen pairs (right). A move changes both: no blitting."""

    def __init__(self, lay: GridLayout, names: Sequence[str]) -> None:
        self.fig = _figure((11, 3.4))
        axes = self.fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
        self.parts = (
            plotting.GridPlot(axes[0], lay, policy=True),
            plotting.BarPlot(axes[1], names, ylabel="mean learned Q(s, a)"),
        )


def cql_demo(offline_q_fn: Callable[..., Any], coverage_fn: Callable[..., Any]) -> widgets.VBox:
    """Demo 3: the same cliff data, trained with the CQL term; the slider sets α."""
    lay = get_layout("cliff")
    data = _cliff_data(0.0)
    scene: list[_Demo3Figure] = []  # made on the first draw, then updated in place

    def draw(alpha: float) -> Figure:
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
        means = {"seen (s, a)": float(q[seen].mean()), "unseen (s, a)": float(q[unseen].mean())}
        if not scene:
            scene.append(_Demo3Figure(lay, list(means)))
        grid, bars = scene[0].parts
        grid.update(policy=policy, title=f"α = {alpha:g}: " + _outcome(lay, policy))
        bars.update(means)
        # The state in words (the caption reads the titles): not only "mean learned Q".
        bars.ax.set_title(f"mean learned Q: unseen {means['unseen (s, a)']:.3g}, "
                          f"seen {means['seen (s, a)']:.3g}")  # fmt: skip
        return scene[0].fig

    slider = widgets.SelectionSlider(
        options=[0.0, 0.01, 0.1, 1.0, 10.0, 100.0],
        value=0.0,
        continuous_update=False,
        description="CQL α",
    )
    hint = (
        "at α = 0 nothing updates the unseen actions, so they keep Q = 0, which beats the seen "
        "moves where those are worth less, and the greedy policy walks into the lava as in "
        "Demo 2; from the smallest α on, the unseen actions' mean Q (right) turns negative and "
        "the policy crosses the bridge."
    )
    return _interactive(slider, draw, hint)


# --------------------------------------------------------------------------- Demo 4
class _Demo4Figure:
    """Demo 4's figure, made once: the returns against the data's quality with a marker line at
    the slider's quality (left: the curves change only while they fill in) and that quality's
    data on the grid (right: what a move changes)."""

    KEYS = ("bc", "naive", "cql")

    def __init__(
        self, lay: GridLayout, qualities: Sequence[float], n_seeds: int, quality: float
    ) -> None:
        self.fig = _figure((11, 3.6))
        axes = self.fig.subplots(1, 2)
        self.curves_ax = axes[0]
        empty = np.full(len(qualities), np.nan)
        plotting.plot_curves(
            axes[0], np.asarray(qualities), {"BC": empty, "naive Q": empty, "CQL": empty},
            xlabel="fraction of expert episodes", ylabel=f"return (mean of {n_seeds} seeds)",
        )  # fmt: skip
        # Beside the curves, not on them: "best" moved the legend with the marker line (upper
        # left at quality 1, lower right at 0), and it now stays while the slider moves.
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        self.lines = axes[0].lines[: len(self.KEYS)]
        self.marker = _overlay(axes[0]).axvline(quality, color="gray", ls=":")
        self.grid = plotting.GridPlot(axes[1], lay, heat="counts",
                                      heat_label="visits (transitions from the state)")  # fmt: skip
        assert self.grid.colorbar is not None
        self.blit = _Blit([axes[1], self.grid.colorbar.ax, self.marker.axes])
        self.fig.blit = self.blit
        self.drawn: np.ndarray | None = None  # the curves on the figure, (3, n_qualities)

    def show(
        self,
        quality: float,
        curves: dict[str, np.ndarray],
        partial: bool,
        counts: np.ndarray,
        title: str,
    ) -> Figure:
        """The figure at ``quality``: the curves so far (``partial``: not all qualities yet),
        the marker line there and the grid of that quality's ``counts`` (S, A)."""
        values = np.stack([np.asarray(curves[key], dtype=float) for key in self.KEYS])
        if self.drawn is None or not np.array_equal(values, self.drawn, equal_nan=True):
            for line, ys in zip(self.lines, values, strict=True):
                line.set_ydata(ys)
            self.curves_ax.relim()  # the limits new curves get
            self.curves_ax.autoscale_view()
            self.blit.changed()
            self.drawn = values
        # How far it is is said once, in the progress line above (fill's "n of 5 qualities
        # done"); a count here too was the same words twice, half a second apart.
        heading = "your quality_experiment: the curves so far…" if partial else ""
        if heading != self.curves_ax.get_title():
            self.curves_ax.set_title(heading)
            self.blit.changed()
        self.marker.set_xdata([quality, quality])
        self.grid.update(counts, title=title)
        return self.fig


def quality_demo(
    quality_experiment_fn: Callable[..., Any],
    coverage_fn: Callable[..., Any],
    layout_name: str = "open",
    n_episodes: int = 4,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
) -> widgets.VBox:
    """Demo 4: returns of BC, naive Q and CQL against the fraction of expert data.

    The student's ``quality_experiment_fn`` runs once per quality (with all the seeds), not
    once for all of them: in a notebook the figure is drawn at once (the slider's data on the
    grid, no curves yet) and again after each quality, so its curves fill in from the left
    instead of appearing after all the work (about 6 s with the solution).
    """
    lay = get_layout(layout_name)
    qualities = [0.0, 0.25, 0.5, 0.75, 1.0]
    curves = {key: np.full(len(qualities), np.nan) for key in ("bc", "naive", "cql")}
    failed: list[NotImplementedYetError] = []  # the student's code raised: do not run it again

    filling = [False]  # fill() runs: a figure drawn now shows the curves so far, even none

    def fill() -> Iterator[str]:
        """Run the student's experiment for each quality not run yet; yields how far it is
        before the first (the figure at once: the data's grid, empty curves) and after each
        but the last (the demo's own draw shows the finished figure)."""
        if failed:
            raise failed[0]
        filling[0] = True
        try:
            if np.isnan(curves["bc"]).all():
                yield f"0 of {len(qualities)} qualities done"
            yield from _fill_qualities()
        finally:
            filling[0] = False

    def _fill_qualities() -> Iterator[str]:
        for k, quality in enumerate(qualities):
            if not np.isnan(curves["bc"][k]):
                continue
            try:
                out = _call(quality_experiment_fn, "quality_experiment", [quality], list(seeds),
                            layout_name=layout_name, n_episodes=n_episodes)  # fmt: skip
                values = {key: _one_value(out, key) for key in curves}
            except NotImplementedYetError as err:
                failed.append(err)
                raise
            for key, value in values.items():
                curves[key][k] = value
            if k + 1 < len(qualities):
                yield f"{k + 1} of {len(qualities)} qualities done"

    scene: list[_Demo4Figure] = []  # made on the first draw, then updated in place

    def draw(quality: float) -> Figure:
        if failed:  # no figure from a part of the curves: they would never fill in
            raise failed[0]
        done = int(np.sum(~np.isnan(curves["bc"])))
        if done == 0 and not filling[0]:  # outside a notebook nothing filled them in: all now
            for _ in fill():
                pass
            done = len(qualities)
        data = quality_dataset(layout_name, quality, n_episodes, seeds[0])
        counts = np.asarray(
            _call(coverage_fn, "coverage_counts", data, lay.n_states, lay.n_actions)
        )
        visited = int(np.sum(counts.sum(axis=1) > 0))
        if not scene:
            scene.append(_Demo4Figure(lay, qualities, len(seeds), quality))
        title = f"quality {quality:.2f}: the data visit {_plural(visited, 'state')}"
        return scene[0].show(quality, curves, done < len(qualities), counts, title)

    slider = widgets.SelectionSlider(
        options=qualities, value=0.5, continuous_update=False, description="data quality"
    )
    hint = (
        "the curves (left) stay, the marker and the data (right) follow the slider: all three "
        "methods are optimal on pure expert data, and at every quality CQL's return is at "
        "least BC's and naive Q's."
    )
    busy = (
        f"Demo 4: running your quality_experiment on {len(qualities)} qualities × "
        f"{_plural(len(seeds), 'seed')}, one quality at a time (about 6 s in all on a quiet "
        "2-core machine with a vectorised offline_q_learning; a Python loop over the "
        "transitions takes minutes):"
    )
    return _interactive(slider, draw, hint, busy, fill=fill)


def _one_value(result: Any, key: str) -> float:
    """``result[key]`` of a quality_experiment run on one quality, as a float.

    Raises:
        NotImplementedYetError: the result is not a dict with one number under ``key`` (the
            question's grader.check says what is wrong).
    """
    waiting = f"waiting for your code ({QUESTION_OF['quality_experiment']})"
    try:
        values = np.asarray(result[key], dtype=np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise NotImplementedYetError(waiting) from err
    if values.shape != (1,):
        raise NotImplementedYetError(waiting)
    return float(values[0])


#: Demo 4's learning curves: training lengths (iterations of the student's learner) shown.
CURVE_ITERS: tuple[int, ...] = (10, 30, 100, 300, 1000, 3000)


def quality_learning_curves(
    offline_q_fn: Callable[..., Any],
    coverage_fn: Callable[..., Any],
    quality: float = 0.5,
    layout_name: str = "open",
    n_episodes: int = 4,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    n_iters: tuple[int, ...] = CURVE_ITERS,
    alpha: float = 1.0,
) -> dict[str, np.ndarray]:
    """Demo 4's learning curves: greedy return (mean over seeds) after each training length.

    Naive Q (α = 0) and CQL are the student's ``offline_q_fn`` stopped after ``n_iters``
    iterations; BC (argmax of the student's counts) has no training loop and is a flat line.

    Returns:
        ``n_iters`` (K,); ``naive``, ``cql`` (K,) and ``bc`` (float array): seed means.
    """
    lay = get_layout(layout_name)
    S, A = lay.n_states, lay.n_actions
    curves = {key: np.zeros((len(n_iters), len(seeds))) for key in ("naive", "cql")}
    bc = np.zeros(len(seeds))
    for j, seed in enumerate(seeds):
        data = quality_dataset(layout_name, quality, n_episodes, seed)
        counts = np.asarray(_call(coverage_fn, "coverage_counts", data, S, A))
        bc[j] = rollout_return(lay, np.argmax(counts, axis=1))
        for i, n in enumerate(n_iters):
            for key, a in (("naive", 0.0), ("cql", alpha)):
                q = _call(offline_q_fn, "offline_q_learning", data, S, A, lay.gamma, alpha=a,
                          n_iters=n)  # fmt: skip
                curves[key][i, j] = rollout_return(lay, greedy_policy(np.asarray(q)))
    out = {"n_iters": np.asarray(n_iters), "bc": np.array(bc.mean())}
    out.update({k: v.mean(axis=1) for k, v in curves.items()})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    plotting.plot_curves(
        ax, out["n_iters"], {"naive Q": out["naive"], f"CQL (α={alpha:g})": out["cql"]},
        xlabel="training iterations", ylabel=f"return (mean of {len(seeds)} seeds)",
    )  # fmt: skip
    ax.axhline(
        float(out["bc"]),
        color=plotting.METHOD_COLOURS["bc"],
        ls="--",
        label="BC (no training loop)",
    )
    ax.set_xscale("log")
    ax.legend(loc="center right", fontsize=8)
    ax.set_title(f"learning curves at quality {quality:g}")
    fig.tight_layout()
    plt.show()
    # The figure's state as text, like the demos' captions (the browser test reads the colours).
    if _in_notebook():
        caption = widgets.HTML(_describe(fig))
        caption.add_class("offline-rl-figure-state")
        display(caption)
    return out


# --------------------------------------------------------------------------- guided parts
def _ranks(values: list[float]) -> list[int]:
    """Competition ranks, 1 = largest; values equal to 1e-6 share a rank."""
    return [1 + sum(other > v + 1e-6 for other in values) for v in values]


def policy_selection(
    dataset: OfflineDataset, layout: str | GridLayout, candidates: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Offline policy selection by FQE, next to the truth that a real application never sees.

    Returns:
        {name: {"fqe", "true", "fqe_rank", "true_rank", "off_data"}}: FQE's estimate and the
        exact discounted value of the policy at the start state, their ranks (1 = best, ties
        share a rank) and ``off_data``, the fraction of the dataset's states in which the
        policy picks an action the data never took there.
    """
    lay = get_layout(layout)
    S, A = lay.n_states, lay.n_actions
    sa = dataset.observations * A + dataset.actions
    counts = np.bincount(sa, minlength=S * A).reshape(S, A)
    visited = counts.sum(axis=1) > 0
    start = lay.start_state
    rows: dict[str, dict[str, float]] = {}
    for name, policy in candidates.items():
        policy = np.asarray(policy, dtype=np.int64)
        q_hat = fitted_q_evaluation(dataset, policy, S, A, lay.gamma)
        unseen = counts[np.arange(S), policy] == 0
        rows[name] = {
            "fqe": float(q_hat[start, policy[start]]),
            "true": float(policy_evaluation(lay, policy)[start]),
            "off_data": float(np.mean(unseen[visited])),
        }
    names = list(rows)
    for key in ("fqe", "true"):
        for name, rank in zip(names, _ranks([rows[n][key] for n in names]), strict=True):
            rows[name][key + "_rank"] = rank
    return rows


def policy_selection_table(
    dataset: OfflineDataset, layout: str | GridLayout, candidates: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Print :func:`policy_selection` as a small table, best FQE estimate first, and FQE's picks.

    Returns:
        the rows of :func:`policy_selection` (assign them: a bare call would echo the dict).
    """
    rows = policy_selection(dataset, layout, candidates)
    order = sorted(rows, key=lambda k: rows[k]["fqe_rank"])
    width = max(len(name) for name in rows) + 2
    print(f"{'policy':<{width}}{'FQE value':>10}{'FQE rank':>10}{'true value':>12}"
          f"{'true rank':>11}{'off the data':>14}")  # fmt: skip
    for name in order:
        r = rows[name]
        print(f"{name:<{width}}{r['fqe']:>10.2f}{r['fqe_rank']:>10d}{r['true']:>12.2f}"
              f"{r['true_rank']:>11d}{r['off_data']:>14.0%}")  # fmt: skip
    pick = order[0]
    print(f"\nFQE picks {pick!r}: true rank {rows[pick]['true_rank']} of {len(rows)}.")
    on_data = [k for k in order if rows[k]["off_data"] == 0.0]
    if on_data and on_data[0] != pick:
        best = on_data[0]
        print(f"Among the candidates that never leave the data, FQE picks {best!r}: "
              f"true rank {rows[best]['true_rank']}.")  # fmt: skip
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
