"""Where the test suite's time goes: sum a ``TEST_CPU_LOG`` file by test and by module.

    TEST_CPU_LOG=build/cpu.jsonl make test
    python tools/cpu_profile.py build/cpu.jsonl [--top 25]

CPU is what the test's worker and every process it started used (tests/conftest.py says how
it is counted): on two cores the suite cannot take less wall time than half the total.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the TEST_CPU_LOG file of one run")
    parser.add_argument("--top", type=int, default=25, help="how many tests to list")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    for row in rows:
        row["total"] = row["cpu"] + row.get("children_cpu", 0.0)
    wall = collections.defaultdict(float)
    for row in rows:
        wall[row["worker"]] += row["wall"]
    total = sum(row["total"] for row in rows)
    print(f"{len(rows)} tests, {total:.0f} CPU-s; busy wall time per worker: "
          + ", ".join(f"{w} {s:.0f} s" for w, s in sorted(wall.items())))  # fmt: skip
    print(f"\nthe {args.top} most expensive tests (CPU-s, wall s):")
    for row in sorted(rows, key=lambda r: -r["total"])[: args.top]:
        print(f"{row['total']:8.1f} {row['wall']:8.1f}  {row['test']}")
    modules: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        module = row["test"].split("::")[0]
        modules[module][0] += row["total"]
        modules[module][1] += row["wall"]
    print("\nby module (CPU-s, wall s):")
    for module, (cpu, seconds) in sorted(modules.items(), key=lambda kv: -kv[1][0]):
        print(f"{cpu:8.1f} {seconds:8.1f}  {module}")


if __name__ == "__main__":
    main()
