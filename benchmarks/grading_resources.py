"""Grading the solution at Gradescope's size: 0.5 CPU and 768 MB, emulated with cgroups v1.

    python benchmarks/grading_resources.py [--repeats 3] [--cpu 0.5] [--memory-mb 768]
                                           [--no-cgroup] [--notebook solution|blank]

Grades the release's solution notebook (``--notebook blank``: the untouched hand-out, which most
of the test suite's gradings grade: its cost is the grader's fixed cost per grading) with the
release's autograder.zip exactly as Gradescope runs it (``python -m grading``, sandboxed
kernel, one torch thread), inside a fresh cgroup per run: ``cpu.cfs_quota_us /
cpu.cfs_period_us`` = ``--cpu`` (Gradescope's default autograder gets half a CPU) and
``memory.limit_in_bytes`` = ``--memory-mb``. The grader and every process it starts (the
sandboxed kernel) inherit the cgroup.

Prints, per run and as medians: the wall time of each grading phase (the grader's start-up,
kernel start, the notebook's set-up (its cells before the first answer cell: the imports), the
other cells, the hidden checks, the report; the grader writes them to stderr when
GRADING_PHASES=1) and the CPU seconds the cgroup's processes
(grader and kernel together) used in each (``cpuacct.usage`` sampled every 20 ms and read at the
phase marks: CPU time transfers between a loaded and a quiet machine, wall time does not), the
total, the peak memory (the cgroup's ``memory.max_usage_in_bytes``,
page cache included, and the summed RSS of the grader's process tree sampled every 20 ms: shared
pages count twice, so both are upper bounds), and the ratio of each to the goal: <= 10 s and
<= 400 MB at 0.5 CPU. Exit status 0 when the medians meet the goal.

Needs root and writable cgroup v1 controllers (/sys/fs/cgroup/cpu, /sys/fs/cgroup/memory).
Without them (cgroup v2 only, a container, no root) it says so and measures without limits
(``--no-cgroup`` forces that); the figures are then not Gradescope's.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "offline_rl"
CGROUP_V1 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
#: The goal at 0.5 CPU (issue 24).
GOAL_S, GOAL_MB = 10.0, 400.0
#: The grader's phase marks, in order; each phase lasts from the previous mark to its own
#: ("start": from launching ``python -m grading`` to its first line of work: interpreter,
#: imports, unpacking; "cleanup": ending the uid and removing the scratch tree after
#: results.json is written; "exit": from there to the process's end, which Gradescope waits
#: for too).
PHASES = ("start", "kernel", "imports", "cells", "hidden checks", "report", "cleanup", "exit")


@dataclass
class Run:
    """One grading: total wall s, phase durations s, peaks MB, the score, throttling."""

    wall: float
    phases: dict[str, float] = field(default_factory=dict)
    cpu_phases: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + sys, grader and kernel) per phase; empty without cgroups."""
    cpu_s: float | None = None
    tree_mb: float = 0.0
    cgroup_mb: float | None = None
    score: float = float("nan")
    throttled_s: float | None = None


# --------------------------------------------------------------------------- memory sampling
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    """Summed resident memory (MB) of ``root`` and all its descendants."""
    tree, stack, total = _children(), [root], 0
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack += tree.get(pid, [])
    return total / 1024


# --------------------------------------------------------------------------- cgroups v1
def cgroup_problem() -> str | None:
    """Why this machine cannot limit a grading with cgroups v1, or None if it can."""
    if os.geteuid() != 0:
        return "not root"
    for controller in ("cpu", "cpuacct", "memory"):
        folder = CGROUP_V1 / controller
        if not (folder / "cgroup.procs").exists():
            return f"no cgroup v1 '{controller}' controller at {folder}"
        if not os.access(folder, os.W_OK):
            return f"{folder} is not writable"
    return None


@contextlib.contextmanager
def limited_cgroup(cpu: float, memory_mb: int) -> Iterator[list[Path]]:
    """Fresh cpu, memory and cpuacct cgroups with the limits; yields their folders (in that
    order), removes them after."""
    name = f"offline-rl-resources-{os.getpid()}-{time.monotonic_ns()}"
    folders = [CGROUP_V1 / kind / name for kind in ("cpu", "memory", "cpuacct")]
    cpu_dir, mem_dir, _acct_dir = folders
    for folder in folders:
        folder.mkdir()
    try:
        (cpu_dir / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cpu_dir / "cpu.cfs_quota_us").write_text(str(round(cpu * PERIOD_US)))
        (mem_dir / "memory.limit_in_bytes").write_text(str(memory_mb * 2**20))
        yield folders
    finally:
        for folder in folders:
            for _ in range(50):  # the last processes may take a moment to leave
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _throttled_s(cpu_dir: Path) -> float:
    """Seconds the cgroup's processes waited for quota (cpu.stat's throttled_time, ns)."""
    for line in (cpu_dir / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "throttled_time":
            return int(value) / 1e9
    return 0.0


# --------------------------------------------------------------------------- one grading
def _marks(stderr: str) -> dict[str, float]:
    """The grader's "grading phase NAME T" lines (T: time.monotonic, system-wide) by name."""
    marks: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("grading phase "):
            name, stamp = line[len("grading phase ") :].rsplit(" ", 1)
            marks[name] = float(stamp)
    return marks


def _phases(marks: dict[str, float], start: float) -> dict[str, float]:
    """Phase durations (s) from the marks; ``start`` is the launch (same clock)."""
    out, previous = {}, start
    for name in PHASES:
        if name in marks:
            out[name] = marks[name] - previous
            previous = marks[name]
    return out


def _cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """The cgroup's CPU seconds at monotonic time ``when``, interpolated between samples."""
    times = [t for t, _ in samples]
    i = bisect.bisect_left(times, when)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (when - t0) / max(t1 - t0, 1e-9)


def _cpu_phases(marks: dict[str, float], samples: list[tuple[float, float]]) -> dict[str, float]:
    """CPU seconds per phase, from (monotonic time, cgroup CPU s) samples taken every 20 ms."""
    out, previous = {}, 0.0
    for name in PHASES:
        if name in marks:
            now = _cpu_at(samples, marks[name])
            out[name] = now - previous
            previous = now
    return out


#: The notebooks ``--notebook`` chooses from (written by ``make release``).
NOTEBOOKS = {
    "solution": ROOT / "autograder" / NAME / f"{NAME}-solution.ipynb",
    "blank": ROOT / "student_release" / NAME / f"{NAME}.ipynb",
}


def run_once(cgroups: list[Path] | None, notebook: Path = NOTEBOOKS["solution"]) -> Run:
    """Grade ``notebook`` once (in ``cgroups`` if given) and measure it."""
    with tempfile.TemporaryDirectory() as tmp:
        src, sub, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        with zipfile.ZipFile(ROOT / "autograder" / NAME / "autograder.zip") as zf:
            zf.extractall(src)
        sub.mkdir()
        (sub / f"{NAME}.ipynb").write_bytes(notebook.read_bytes())
        cmd = [sys.executable, "-m", "grading", str(src), str(sub), str(res)]
        procs = [folder / "cgroup.procs" for folder in cgroups or []]
        acct_dir = cgroups[2] if cgroups else None

        def enter_cgroups() -> None:  # in the child, before exec: all its descendants follow
            for path in procs:
                path.write_text(str(os.getpid()))

        err_path = Path(tmp, "stderr")
        with err_path.open("w") as err:
            t0 = time.perf_counter()
            start = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=src, stdout=subprocess.PIPE, stderr=err,
                                    env={**os.environ, "GRADING_PHASES": "1"},
                                    preexec_fn=enter_cgroups if procs else None)  # fmt: skip
            peak = 0.0
            usage = acct_dir / "cpuacct.usage" if acct_dir else None
            samples = [(start, 0.0)]  # (monotonic, CPU s of the cgroup since the launch)
            while proc.poll() is None:
                peak = max(peak, tree_rss_mb(proc.pid))
                if usage is not None:
                    samples.append((time.monotonic(), int(usage.read_text()) / 1e9))
                time.sleep(0.02)
            wall = time.perf_counter() - t0
            end = time.monotonic()
            if usage is not None:
                samples.append((time.monotonic(), int(usage.read_text()) / 1e9))
        out = proc.stdout.read().decode() if proc.stdout else ""
        lines = [line for line in out.splitlines() if line.startswith("score ")]
        marks = {**_marks(err_path.read_text()), "exit": end}
        run = Run(wall=wall, phases=_phases(marks, start), tree_mb=peak)
        run.score = float(lines[0].split()[1].rstrip(":")) if lines else float("nan")
        if cgroups:
            cpu_dir, mem_dir, _ = cgroups
            run.cpu_phases = _cpu_phases(marks, samples)
            run.cpu_s = samples[-1][1]
            usage = int((mem_dir / "memory.max_usage_in_bytes").read_text())
            run.cgroup_mb = usage / 2**20
            run.throttled_s = _throttled_s(cpu_dir)
        return run


# --------------------------------------------------------------------------- report
def _line(run: Run) -> str:
    phases = "  ".join(
        f"{k} {v:4.1f}" + (f"/{run.cpu_phases[k]:.1f}" if k in run.cpu_phases else "")
        for k, v in run.phases.items()
    )
    cpu = f"  CPU {run.cpu_s:5.1f} s" if run.cpu_s is not None else ""
    cgroup = f"cgroup peak {run.cgroup_mb:4.0f} MB  " if run.cgroup_mb is not None else ""
    throttled = f"  throttled {run.throttled_s:4.1f} s" if run.throttled_s is not None else ""
    return (f"wall {run.wall:5.1f} s{cpu}  [wall/CPU s: {phases}]  {cgroup}"
            f"tree RSS {run.tree_mb:4.0f} MB  score {run.score:g}{throttled}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=float, default=0.5, help="CPUs of quota (Gradescope: 0.5)")
    parser.add_argument("--memory-mb", type=int, default=768, help="memory limit (MB)")
    parser.add_argument("--no-cgroup", action="store_true", help="measure without limits")
    parser.add_argument("--notebook", choices=sorted(NOTEBOOKS), default="solution",
                        help="grade the solution (default) or the untouched hand-out")  # fmt: skip
    args = parser.parse_args()
    problem = "--no-cgroup given" if args.no_cgroup else cgroup_problem()
    if problem:
        print(f"NOT LIMITED ({problem}): grading with the whole machine; these figures are not "
              "Gradescope's 0.5 CPU and will look better than Gradescope will.")  # fmt: skip
    else:
        print(f"cgroup v1: cpu quota {args.cpu:g} CPU ({round(args.cpu * PERIOD_US)} us per "
              f"{PERIOD_US} us), memory limit {args.memory_mb} MB")  # fmt: skip
    print(f"grading the {args.notebook} notebook ({NOTEBOOKS[args.notebook].relative_to(ROOT)})")
    runs = []
    for i in range(args.repeats):
        with contextlib.ExitStack() as stack:
            groups = None if problem else stack.enter_context(
                limited_cgroup(args.cpu, args.memory_mb)
            )  # fmt: skip
            runs.append(run_once(groups, NOTEBOOKS[args.notebook]))
        print(f"run {i + 1}: {_line(runs[-1])}", flush=True)
    wall = statistics.median(r.wall for r in runs)
    memory = [r.cgroup_mb if r.cgroup_mb is not None else r.tree_mb for r in runs]
    peak = statistics.median(memory)
    print("median phases, wall s: " + "  ".join(
        f"{name} {statistics.median(r.phases.get(name, 0.0) for r in runs):.1f}"
        for name in PHASES
    ))  # fmt: skip
    if not problem:
        print("median phases, CPU s (grader + kernel): " + "  ".join(
            f"{name} {statistics.median(r.cpu_phases.get(name, 0.0) for r in runs):.1f}"
            for name in PHASES
        ))  # fmt: skip
        cpu_total = statistics.median(r.cpu_s or 0.0 for r in runs)
        print(f"median CPU {cpu_total:.1f} s (at {args.cpu:g} CPU the wall time is at least "
              f"{cpu_total / args.cpu:.1f} s)")  # fmt: skip
    print(f"median wall {wall:.1f} s: {wall / GOAL_S:.2f} x the goal ({GOAL_S:g} s at 0.5 CPU)")
    source = "tree RSS" if problem else "cgroup peak, page cache included"
    print(
        f"median peak {peak:.0f} MB ({source}): {peak / GOAL_MB:.2f} x the goal "
        f"({GOAL_MB:g} MB); tree RSS median {statistics.median(r.tree_mb for r in runs):.0f} MB"
    )
    if any(r.score != runs[0].score for r in runs):
        print(f"scores differ between runs: {[r.score for r in runs]}")
    return 0 if wall <= GOAL_S and peak <= GOAL_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
