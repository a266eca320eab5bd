"""Each demo's first render and every slider move, headless: CPU and wall seconds, by phase.

    python benchmarks/profile_demos.py [--repeat 3] [--demos 1234] [--cprofile DEMO]
    PYTHONPATH=/tmp/before/reference python benchmarks/profile_demos.py   # an older reference

Builds the four demos on the reference's functions (the solution's twins) and moves each
slider to every value, the way a student would. Every figure is rendered to PNG, as in a
notebook, so its cost is counted (the demos before issue 24 displayed a figure, which the
inline backend renders with ``bbox_inches="tight"``: ``_show`` below pays that). Each demo is
built ``--repeat`` times and the median of each step printed: CPU seconds of this process
(user + sys, ``time.process_time``; the course's machine is shared, so this is the figure to
compare) and wall seconds, then the CPU seconds by phase:

* ``compute``: the student's functions and the data and rollouts a draw needs;
* ``render``: matplotlib drawing the figure (``FigureCanvasAgg.draw``: artists to pixels),
  or only the axes a move changes (``Axes.draw``, for a figure redrawn in part);
* ``encode``: PNG encoding of the pixels (PIL's PNG writer);
* ``build``: the rest: creating or updating the figure's artists, the caption, the widgets.

Each demo's last line sums up its moves (median and slowest over the moves). A move to a value
seen before is a cache hit (what a student gets when sliding back). Outside a kernel a move
draws at once; in a kernel it waits ``widgets.MOVE_SETTLE_S`` (0.15 s wall, no CPU) for the
next key press first, and the browser adds the transport (tests/test_browser.py times both).
Outside a kernel Demo 4 computes all its curves before its first figure (in a notebook it
draws them as they fill in, one quality at a time).

To compare with an older reference (before/after), export it and put it first on the path:
``git archive <commit> reference | tar -x -C /tmp/before``, then run this script with
``PYTHONPATH=/tmp/before/reference``.

``--cprofile N`` (1-4): the top functions of demo N's first render and moves, by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import PIL.Image
from IPython.core.pylabtools import print_figure
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from offline_rl import widgets
from offline_rl.algorithms.coverage import coverage_counts
from offline_rl.algorithms.experiments import quality_experiment
from offline_rl.algorithms.tabular import offline_q_learning

PHASES = ("compute", "build", "render", "encode")


class PhaseClock:
    """CPU seconds spent inside wrapped functions, per phase; a call nested in another timed
    call is counted once, in the outer one's phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inside = False

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed into ``phase``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._inside:
                return fn(*args, **kwargs)
            self._inside = True
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.process_time() - t0
                self._inside = False

        return timed

    def take(self) -> dict[str, float]:
        """The seconds so far, per phase; starts again from zero."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out


CLOCK = PhaseClock()


def _install_clock() -> None:
    """Time matplotlib's drawing, PIL's PNG writer and the compute the demos call by name."""
    FigureCanvasAgg.draw = CLOCK.wrap("render", FigureCanvasAgg.draw)  # type: ignore[method-assign]
    # A figure redrawn in part (widgets._Blit) draws its changed axes one by one.
    Axes.draw = CLOCK.wrap("render", Axes.draw)  # type: ignore[method-assign]
    PIL.Image.init()
    PIL.Image.SAVE["PNG"] = CLOCK.wrap("encode", PIL.Image.SAVE["PNG"])
    # Module globals the demos call while drawing (data, rollouts): compute, not figure work.
    for name in ("_cliff_data", "quality_dataset", "greedy_policy", "rollout_return",
                 "_first_episodes", "_coverage_sweep"):  # fmt: skip
        if hasattr(widgets, name):
            setattr(widgets, name, CLOCK.wrap("compute", getattr(widgets, name)))


def _show(shown: Any, output: Any) -> None:
    """``widgets._show`` without a kernel. Given a figure (the demos before issue 24), what
    ``display(fig)`` costs in a kernel: the inline backend's PNG (bbox_inches tight). Given a
    rendered frame, nothing: ``widgets._render`` already paid for the PNG."""
    if isinstance(shown, plt.Figure):
        print_figure(shown, "png", bbox_inches="tight")
        plt.close(shown)


def _student(fn: Callable[..., Any]) -> Callable[..., Any]:
    return CLOCK.wrap("compute", fn)


DEMOS: dict[str, Callable[[], Any]] = {
    "1": lambda: widgets.online_vs_offline_demo(coverage_fn=_student(coverage_counts)),
    "2": lambda: widgets.distribution_shift_demo(
        _student(offline_q_learning), _student(coverage_counts)
    ),
    "3": lambda: widgets.cql_demo(_student(offline_q_learning), _student(coverage_counts)),
    "4": lambda: widgets.quality_demo(_student(quality_experiment), _student(coverage_counts)),
}


def _control(box: Any) -> Any:
    return next(c for c in box.children if hasattr(c, "options") or hasattr(c, "min"))


def _values(control: Any) -> list[Any]:
    """Every value of the slider, the starting one last (so each move is a fresh value)."""
    if hasattr(control, "options"):
        values = list(control.options)
    else:
        n = round((control.max - control.min) / control.step)
        values = [round(control.min + i * control.step, 10) for i in range(n + 1)]
    return [v for v in values if v != control.value]


Step = dict[str, float]  # "cpu", "wall" and the PHASES, in seconds


def _timed(action: Callable[[], Any]) -> Step:
    CLOCK.take()
    c0, w0 = time.process_time(), time.perf_counter()
    action()
    out: Step = {"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}
    phases = CLOCK.take()
    for phase in ("compute", "render", "encode"):
        out[phase] = phases.get(phase, 0.0)
    out["build"] = out["cpu"] - out["compute"] - out["render"] - out["encode"]
    return out


def run(name: str) -> dict[str, Step]:
    """CPU and wall seconds (and CPU by phase) of the first render and each move of demo
    ``name``; after every value once, a move back to the first value (a cache hit)."""
    out: dict[str, Step] = {}
    box: list[Any] = []
    out["first render"] = _timed(lambda: box.append(DEMOS[name]()))
    control = _control(box[0])
    values = _values(control)
    for value in values:
        out[f"move to {value:g}"] = _timed(lambda value=value: setattr(control, "value", value))
    first = values[0]
    out[f"back to {first:g} (cached)"] = _timed(lambda: setattr(control, "value", first))
    plt.close("all")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="builds of each demo (median)")
    parser.add_argument("--cprofile", choices=sorted(DEMOS), help="profile one demo by function")
    parser.add_argument("--demos", default="1234", help="which demos, e.g. 14")
    args = parser.parse_args()
    widgets._show = _show  # type: ignore[assignment]
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.runcall(run, args.cprofile)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
        return 0
    _install_clock()
    print(f"medians of {args.repeat} builds; seconds; compute..encode: CPU s by phase")
    header = f"{'demo':<5} {'step':<20} {'CPU':>6} {'wall':>6}" + "".join(
        f" {p:>8}" for p in PHASES
    )
    print(header)
    for name in args.demos:
        runs = [run(name) for _ in range(args.repeat)]
        moves: dict[str, list[float]] = {"cpu": [], "wall": []}
        for step in runs[0]:
            median = {k: statistics.median(r[step][k] for r in runs) for k in runs[0][step]}
            print(f"{name:<5} {step:<20} {median['cpu']:>6.3f} {median['wall']:>6.3f}"
                  + "".join(f" {median[p]:>8.3f}" for p in PHASES))  # fmt: skip
            if step.startswith("move"):
                for key in moves:
                    moves[key].append(median[key])
        print(f"{name:<5} {'moves: median, max':<20} "
              f"CPU {statistics.median(moves['cpu']):.3f}, {max(moves['cpu']):.3f}; "
              f"wall {statistics.median(moves['wall']):.3f}, {max(moves['wall']):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
