"""Run All of a notebook, cell by cell: wall time and the kernel's CPU time per code cell.

    python benchmarks/profile_notebook.py [--student] [--top 12] [--release DIR]

Runs the release's solution notebook (``make release`` writes it), or with ``--student`` the
untouched hand-out, inside a copy of ``student_release/offline_rl`` (the folder a student gets:
the notebook must be called ``offline_rl.ipynb`` there for otter's ``grader.check``). The
machine this course is built on is shared, so wall time is noisy; the kernel's CPU time (user +
sys of the kernel process and its children, read from /proc around each cell) is the figure to
compare. ``--release DIR``: a folder holding another build's ``student_release/`` and
``autograder/`` (e.g. ``git archive <commit> student_release autograder | tar -x -C DIR``), to
compare before and after back to back, under the same load.
Prints the slowest cells first and the totals.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "autograder" / "offline_rl" / "offline_rl-solution.ipynb"
HANDOUT = ROOT / "student_release" / "offline_rl"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + sys CPU seconds of ``pid`` and its waited-for children (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[11:15]: utime, stime, cutime, cstime (proc(5)'s fields 14-17)
    return sum(int(x) for x in fields[11:15]) / _TICK


class TimedClient(NotebookClient):
    """A NotebookClient that records (wall s, kernel CPU s) for every code cell it runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.timings: list[tuple[int, float, float, str]] = []

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):  # type: ignore[no-untyped-def]
        pid = self.km.provisioner.process.pid  # type: ignore[union-attr]
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        out = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        if cell.cell_type == "code":
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            self.timings.append((cell_index, wall, cpu, first[:70]))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", action="store_true", help="the untouched hand-out")
    parser.add_argument("--release", type=Path, default=ROOT, help="folder of another build")
    parser.add_argument("--top", type=int, default=12, help="how many of the slowest cells")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "offline_rl")
        shutil.copytree(args.release / HANDOUT.relative_to(ROOT), folder)
        if not args.student:
            shutil.copy(args.release / SOLUTION.relative_to(ROOT), folder / "offline_rl.ipynb")
        nb = nbformat.read(folder / "offline_rl.ipynb", as_version=4)
        client = TimedClient(nb, timeout=600, kernel_name="python3",
                             resources={"metadata": {"path": str(folder)}})  # fmt: skip
        t0 = time.perf_counter()
        client.execute()
        total = time.perf_counter() - t0
    rows = sorted(client.timings, key=lambda r: -r[2])
    print(f"{'cell':>4} {'wall s':>7} {'CPU s':>7}  first line")
    for index, wall, cpu, first in rows[: args.top]:
        print(f"{index:>4} {wall:>7.2f} {cpu:>7.2f}  {first}")
    cells_cpu = sum(r[2] for r in client.timings)
    cells_wall = sum(r[1] for r in client.timings)
    print(f"all {len(rows)} code cells: wall {cells_wall:.1f} s, kernel CPU {cells_cpu:.1f} s; "
          f"Run All incl. kernel start {total:.1f} s wall")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
