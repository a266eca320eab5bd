"""The notebook's CartPole claim on more seeds than the suite runs: each assertion's margin.

    python benchmarks/cartpole_claim.py [--seeds 10]

Runs ``tests/test_neural.py``'s ``run_cartpole_claim`` (the notebook's CartPole cell with the
reference agents) on seeds 0..N-1 and prints, per seed, the margin of every assertion the
claim test makes (>= 0: it holds) and the numbers behind them, then how many seeds hold and
the CPU seconds per seed (user + sys of this process: the machine is shared, wall time is not
comparable). ``tests/CLAIMS.md`` row 23 quotes its output.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_neural import CLAIM_MARGINS, run_cartpole_claim


def cpu_seconds() -> float:
    """user + sys CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    args = parser.parse_args()
    held, cpu = 0, []
    for seed in range(args.seeds):
        start = cpu_seconds()
        result = run_cartpole_claim(seed)
        cpu.append(cpu_seconds() - start)
        failed = [k for k in CLAIM_MARGINS if result[k] < 0]
        held += not failed
        numbers = " ".join(f"{k}={v:.1f}" for k, v in result.items() if k not in CLAIM_MARGINS)
        margins = " ".join(f"{k}={result[k]:.2f}" for k in CLAIM_MARGINS)
        print(f"seed {seed}: {'holds' if not failed else 'FAILS ' + ','.join(failed)}\n"
              f"  {numbers}\n  margins {margins}  ({cpu[-1]:.1f} CPU-s)", flush=True)  # fmt: skip
    worst = "the smallest margins are in the lines above"
    print(f"{held}/{args.seeds} seeds hold; {sum(cpu) / len(cpu):.1f} CPU-s per seed; {worst}")
    return 0 if held == args.seeds else 1


if __name__ == "__main__":
    raise SystemExit(main())
