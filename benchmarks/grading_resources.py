"""Peak memory (grader + student kernel) and wall time of grading the solution notebook.

    python benchmarks/grading_resources.py [--repeats 5]

Grades the release's solution notebook with the release's autograder.zip exactly as Gradescope
runs it (``python -m grading``, sandboxed kernel, one torch thread), sampling every 20 ms the
resident memory of the grader and all its descendants (summed: shared pages count twice, so the
figure is an upper bound). Prints every run and the medians. Targets: peak <= 700 MB (Gradescope
kills at 768 MB), wall <= 60 s (Gradescope stops at 600 s). Needs root.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "offline_rl"


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
    tree, stack, total = _children(), [root], 0
    while stack:
        pid = stack.pop()
        total += _rss_kb(pid)
        stack += tree.get(pid, [])
    return total / 1024


def run_once() -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        src, sub, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        with zipfile.ZipFile(ROOT / "autograder" / NAME / "autograder.zip") as zf:
            zf.extractall(src)
        sub.mkdir()
        solution = ROOT / "autograder" / NAME / f"{NAME}-solution.ipynb"
        (sub / f"{NAME}.ipynb").write_bytes(solution.read_bytes())
        cmd = [sys.executable, "-m", "grading", str(src), str(sub), str(res)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        out = proc.stdout.read().decode() if proc.stdout else ""
        # stdout and stderr are merged: the "score N:" line need not come first.
        lines = [line for line in out.splitlines() if line.startswith("score ")]
        score = float(lines[0].split()[1].rstrip(":")) if lines else float("nan")
        return wall, peak, score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    walls, peaks = [], []
    for i in range(args.repeats):
        wall, peak, score = run_once()
        walls.append(wall)
        peaks.append(peak)
        print(
            f"run {i + 1}: wall {wall:5.1f} s   peak RSS (grader + kernel) {peak:6.0f} MB   "
            f"score {score:g}"
        )
    wall, peak = statistics.median(walls), statistics.median(peaks)
    print(f"median wall {wall:.1f} s (target <= 60 s, {60 / wall:.1f}x headroom)")
    print(
        f"median peak {peak:.0f} MB, max {max(peaks):.0f} MB "
        "(target <= 700 MB; Gradescope kills at 768 MB)"
    )
    return 0 if wall <= 60 and max(peaks) <= 700 else 1


if __name__ == "__main__":
    raise SystemExit(main())
