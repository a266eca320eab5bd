"""Throughput of ``python -m grading batch``: submissions per minute with --jobs 1 and 2.

    python benchmarks/bench_batch.py [--n 6] [--jobs 1 2] [--repeats 1]

Grades N distinct submissions (the solution and corpus mutants: each grading runs the whole
notebook) into a fresh OUT per run, as root for the sandbox. Prints wall time, submissions per
minute and CPU seconds (user + sys of every child process) per grading. CPU seconds do not depend
on what else the machine runs; wall time does, so on a shared machine trust the CPU figure and
derive a wall estimate from it (a grading is single-threaded: cores / CPU-seconds-per-grading).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.corpus import corpus  # noqa: E402  (needs ROOT on sys.path)


def make_class(folder: Path, n: int) -> None:
    """``n`` distinct notebooks: the solution and the first n-1 wrong mutants."""
    folder.mkdir(parents=True)
    nbformat.write(corpus.solution(), folder / "solution.ipynb")
    wrong = [m for m in corpus.load_mutants() if m.kind == "wrong"][: n - 1]
    for mutant in wrong:
        nbformat.write(corpus.apply(corpus.solution(), mutant), folder / f"{mutant.name}.ipynb")


def run(subs: Path, out: Path, jobs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the children) of one batch run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "grading", "batch", str(corpus.ZIP), str(subs), str(out),
           "--jobs", str(jobs), "--no-progress"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="submissions per run")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        subs = Path(tmp, "subs")
        make_class(subs, args.n)
        for jobs in args.jobs:
            walls, cpus = [], []
            for r in range(args.repeats):
                wall, cpu = run(subs, Path(tmp, f"out-{jobs}-{r}"), jobs)
                walls.append(wall)
                cpus.append(cpu)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            print(
                f"--jobs {jobs}: {args.n} submissions in {wall:.1f} s wall "
                f"({60 * args.n / wall:.1f} per minute), {cpu / args.n:.1f} CPU-s per grading "
                f"(median of {args.repeats})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
