"""Each demo's first render and every slider move, headless: CPU seconds per step.

    python benchmarks/profile_demos.py [--repeat 3] [--demos 1234] [--cprofile DEMO]

Builds the four demos on the reference's functions (the solution's twins) and moves each
slider to every value, the way a student would. Every figure is rendered to PNG, as in a
notebook, so its cost is counted (the demos before issue 24 displayed a figure, which the
inline backend renders with ``bbox_inches="tight"``: ``_show`` below pays that). CPU time of
this process (user + sys, ``time.process_time``) is reported, not wall time: the course's
machine is shared. Each demo is built ``--repeat`` times and the median printed. A move to a
value seen before is a cache hit (what a student gets when sliding back). Outside a kernel
Demo 4 computes all its curves before its first figure (in a notebook it draws them as they
fill in, one quality at a time).

``--cprofile N`` (1-4): the top functions of demo N's first render and moves, by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from IPython.core.pylabtools import print_figure
from offline_rl import widgets
from offline_rl.algorithms.coverage import coverage_counts
from offline_rl.algorithms.experiments import quality_experiment
from offline_rl.algorithms.tabular import offline_q_learning


def _show(shown: Any, output: Any) -> None:
    """``widgets._show`` without a kernel. Given a figure (the demos before issue 24), what
    ``display(fig)`` costs in a kernel: the inline backend's PNG (bbox_inches tight). Given a
    rendered frame, nothing: ``widgets._render`` already paid for the PNG."""
    if isinstance(shown, plt.Figure):
        print_figure(shown, "png", bbox_inches="tight")
        plt.close(shown)


DEMOS: dict[str, Callable[[], Any]] = {
    "1": lambda: widgets.online_vs_offline_demo(coverage_fn=coverage_counts),
    "2": lambda: widgets.distribution_shift_demo(offline_q_learning, coverage_counts),
    "3": lambda: widgets.cql_demo(offline_q_learning, coverage_counts),
    "4": lambda: widgets.quality_demo(quality_experiment, coverage_counts),
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


def run(name: str) -> dict[str, float]:
    """CPU seconds of the first render and of each move of demo ``name``."""
    out: dict[str, float] = {}
    t0 = time.process_time()
    box = DEMOS[name]()
    out["first render"] = time.process_time() - t0
    control = _control(box)
    for value in _values(control):
        t0 = time.process_time()
        control.value = value
        out[f"move to {value:g}"] = time.process_time() - t0
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
    print(f"{'demo':<5} {'step':<16} {'CPU s (median of ' + str(args.repeat) + ')':>24}")
    for name in args.demos:
        runs = [run(name) for _ in range(args.repeat)]
        for step in runs[0]:
            median = statistics.median(r[step] for r in runs)
            print(f"{name:<5} {step:<16} {median:>24.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
