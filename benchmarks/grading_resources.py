"""Grading the solution at Gradescope's size: 0.5 CPU and 768 MB, emulated with cgroups v1.

    python benchmarks/grading_resources.py [--repeats 3] [--cpu 0.5] [--memory-mb 768]
                                           [--no-cgroup]

Grades the release's solution notebook with the release's autograder.zip exactly as Gradescope
runs it (``python -m grading``, sandboxed kernel, one torch thread), inside a fresh cgroup per
run: ``cpu.cfs_quota_us / cpu.cfs_period_us`` = ``--cpu`` (Gradescope's default autograder gets
half a CPU) and ``memory.limit_in_bytes`` = ``--memory-mb``. The grader and every process it
starts (the sandboxed kernel) inherit the cgroup.

Prints, per run and as medians: the wall time of each grading phase (the grader's start-up,
kernel start, the set-up
cell's imports, the other cells, the hidden checks, the report; the grader writes them to stderr
when GRADING_PHASES=1), the total, the peak memory (the cgroup's ``memory.max_usage_in_bytes``,
page cache included, and the summed RSS of the grader's process tree sampled every 20 ms: shared
pages count twice, so both are upper bounds), and the ratio of each to the goal: <= 10 s and
<= 400 MB at 0.5 CPU. Exit status 0 when the medians meet the goal.

Needs root and writable cgroup v1 controllers (/sys/fs/cgroup/cpu, /sys/fs/cgroup/memory).
Without them (cgroup v2 only, a container, no root) it says so and measures without limits
(``--no-cgroup`` forces that); the figures are then not Gradescope's.
"""

from __future__ import annotations

import argparse
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
#: imports, unpacking).
PHASES = ("start", "kernel", "imports", "cells", "hidden checks", "report")


@dataclass
class Run:
    """One grading: total wall s, phase durations s, peaks MB, the score, throttling."""

    wall: float
    phases: dict[str, float] = field(default_factory=dict)
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
    for controller in ("cpu", "memory"):
        folder = CGROUP_V1 / controller
        if not (folder / "cgroup.procs").exists():
            return f"no cgroup v1 '{controller}' controller at {folder}"
        if not os.access(folder, os.W_OK):
            return f"{folder} is not writable"
    return None


@contextlib.contextmanager
def limited_cgroup(cpu: float, memory_mb: int) -> Iterator[list[Path]]:
    """Fresh cpu and memory cgroups with the limits; yields their folders, removes them after."""
    name = f"offline-rl-resources-{os.getpid()}-{time.monotonic_ns()}"
    cpu_dir, mem_dir = CGROUP_V1 / "cpu" / name, CGROUP_V1 / "memory" / name
    cpu_dir.mkdir()
    mem_dir.mkdir()
    try:
        (cpu_dir / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cpu_dir / "cpu.cfs_quota_us").write_text(str(round(cpu * PERIOD_US)))
        (mem_dir / "memory.limit_in_bytes").write_text(str(memory_mb * 2**20))
        yield [cpu_dir, mem_dir]
    finally:
        for folder in (cpu_dir, mem_dir):
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
def _phases(stderr: str, start: float) -> dict[str, float]:
    """Phase durations from the grader's "grading phase NAME T" lines (T: time.monotonic, the
    same system-wide clock as ``start``, the launch)."""
    marks: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("grading phase "):
            name, stamp = line[len("grading phase "):].rsplit(" ", 1)
            marks[name] = float(stamp)
    out, previous = {}, start
    for name in PHASES:
        if name in marks:
            out[name] = marks[name] - previous
            previous = marks[name]
    return out


def run_once(cgroups: list[Path] | None) -> Run:
    """Grade the solution once (in ``cgroups`` if given) and measure it."""
    with tempfile.TemporaryDirectory() as tmp:
        src, sub, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        with zipfile.ZipFile(ROOT / "autograder" / NAME / "autograder.zip") as zf:
            zf.extractall(src)
        sub.mkdir()
        solution = ROOT / "autograder" / NAME / f"{NAME}-solution.ipynb"
        (sub / f"{NAME}.ipynb").write_bytes(solution.read_bytes())
        cmd = [sys.executable, "-m", "grading", str(src), str(sub), str(res)]
        procs = [folder / "cgroup.procs" for folder in cgroups or []]

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
            while proc.poll() is None:
                peak = max(peak, tree_rss_mb(proc.pid))
                time.sleep(0.02)
            wall = time.perf_counter() - t0
        out = proc.stdout.read().decode() if proc.stdout else ""
        lines = [line for line in out.splitlines() if line.startswith("score ")]
        run = Run(wall=wall, phases=_phases(err_path.read_text(), start), tree_mb=peak)
        run.score = float(lines[0].split()[1].rstrip(":")) if lines else float("nan")
        if cgroups:
            cpu_dir, mem_dir = cgroups
            usage = int((mem_dir / "memory.max_usage_in_bytes").read_text())
            run.cgroup_mb = usage / 2**20
            run.throttled_s = _throttled_s(cpu_dir)
        return run


# --------------------------------------------------------------------------- report
def _line(run: Run) -> str:
    phases = "  ".join(f"{k} {v:4.1f}" for k, v in run.phases.items())
    cgroup = f"cgroup peak {run.cgroup_mb:4.0f} MB  " if run.cgroup_mb is not None else ""
    throttled = f"  throttled {run.throttled_s:4.1f} s" if run.throttled_s is not None else ""
    return (f"wall {run.wall:5.1f} s  [{phases}]  {cgroup}tree RSS {run.tree_mb:4.0f} MB  "
            f"score {run.score:g}{throttled}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=float, default=0.5, help="CPUs of quota (Gradescope: 0.5)")
    parser.add_argument("--memory-mb", type=int, default=768, help="memory limit (MB)")
    parser.add_argument("--no-cgroup", action="store_true", help="measure without limits")
    args = parser.parse_args()
    problem = "--no-cgroup given" if args.no_cgroup else cgroup_problem()
    if problem:
        print(f"NOT LIMITED ({problem}): grading with the whole machine; these figures are not "
              "Gradescope's 0.5 CPU and will look better than Gradescope will.")  # fmt: skip
    else:
        print(f"cgroup v1: cpu quota {args.cpu:g} CPU ({round(args.cpu * PERIOD_US)} us per "
              f"{PERIOD_US} us), memory limit {args.memory_mb} MB")  # fmt: skip
    runs = []
    for i in range(args.repeats):
        with contextlib.ExitStack() as stack:
            groups = None if problem else stack.enter_context(
                limited_cgroup(args.cpu, args.memory_mb)
            )  # fmt: skip
            runs.append(run_once(groups))
        print(f"run {i + 1}: {_line(runs[-1])}", flush=True)
    wall = statistics.median(r.wall for r in runs)
    memory = [r.cgroup_mb if r.cgroup_mb is not None else r.tree_mb for r in runs]
    peak = statistics.median(memory)
    print("median phases: " + "  ".join(
        f"{name} {statistics.median(r.phases.get(name, 0.0) for r in runs):.1f} s"
        for name in PHASES
    ))  # fmt: skip
    print(f"median wall {wall:.1f} s: {wall / GOAL_S:.2f} x the goal ({GOAL_S:g} s at 0.5 CPU)")
    source = "tree RSS" if problem else "cgroup peak, page cache included"
    print(f"median peak {peak:.0f} MB ({source}): {peak / GOAL_MB:.2f} x the goal "
          f"({GOAL_MB:g} MB); tree RSS median {statistics.median(r.tree_mb for r in runs):.0f} MB")
    if any(r.score != runs[0].score for r in runs):
        print(f"scores differ between runs: {[r.score for r in runs]}")
    return 0 if wall <= GOAL_S and peak <= GOAL_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
