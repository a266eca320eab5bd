"""Wall-clock cost of the reference implementation (not a test).

* Neural CQL: seconds per 1,000 gradient steps on a CartPole dataset, at batch 32 and 256,
  with one torch thread and with torch's default thread count.
* Tabular CQL: 1,000 sweeps of ``tabular_cql`` on a 10x10 grid from 20 and from 200 random
  episodes (budget: <= 0.1 s).
* Tabular sweeps (``offline_rl.algorithms.experiments.alpha_sweep`` / ``quality_sweep``) with
  their default arguments, when those modules import.

Each timing is repeated 5 times; the table shows the median and the min/max.

Run: ``.venv/bin/python benchmarks/bench_reference.py``
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from offline_rl.algorithms.neural import CQL, CQLConfig
from offline_rl.cartpole import N_ACTIONS, OBS_DIM, make_cartpole_dataset
from offline_rl.training import train_offline

REPEATS = 5
STEPS = 1_000


def _time(fn: Callable[[], object], repeats: int = REPEATS) -> list[float]:
    """Run ``fn`` ``repeats`` times; return the wall-clock seconds of each run."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _row(name: str, times: list[float]) -> str:
    return f"{name:<44} {statistics.median(times):>8.2f} s   [{min(times):.2f}, {max(times):.2f}]"


def bench_neural() -> list[str]:
    data = make_cartpole_dataset("random", n_episodes=300, seed=0, progress=False)
    rows = []
    default_threads = torch.get_num_threads()
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for batch_size in (32, 256):

            def run(batch_size: int = batch_size) -> None:
                agent = CQL(OBS_DIM, N_ACTIONS, CQLConfig(seed=0))
                train_offline(
                    agent, data, STEPS, batch_size, seed=0, progress=False, n_threads=None
                )  # the loop above sets them

            label = f"CQL {STEPS} steps, batch {batch_size}, {threads} thread(s)"
            rows.append(_row(label, _time(run)))
    torch.set_num_threads(default_threads)
    return rows


def bench_tabular_cql() -> list[str]:
    """1,000 full-table sweeps of tabular CQL on a 10x10 grid (goal in the far corner), on 20
    and on 200 random episodes: the data are pooled by (s, a, s') once, so a sweep costs
    O(S x A x S'), not O(transitions)."""
    from offline_rl.algorithms.tabular import tabular_cql
    from offline_rl.behavior import random_policy
    from offline_rl.datasets import collect_dataset
    from offline_rl.envs import GridLayout, make_grid_env

    grid = GridLayout(
        name="bench10", rows=10, cols=10, start=(9, 0), goals={(0, 9): 10.0}, horizon=50
    )
    rows = []
    for episodes in (20, 200):
        data = collect_dataset(
            make_grid_env(grid), random_policy(), episodes, seed=0, progress=False
        )
        times = _time(
            lambda data=data: tabular_cql(
                data, grid.n_states, grid.n_actions, grid.gamma, alpha=1.0, n_iters=1_000
            )
        )
        verdict = "met" if statistics.median(times) <= 0.1 else "MISSED"
        label = f"tabular CQL 1,000 sweeps, 10x10, {len(data):,} transitions"
        rows.append(_row(label, times) + f"   goal <= 0.1 s: {verdict}")
    return rows


def bench_tabular() -> list[str]:
    try:
        from offline_rl.algorithms.experiments import alpha_sweep, quality_sweep
    except ImportError as err:
        return [f"(tabular sweeps skipped: {err})"]
    return [
        _row("tabular alpha_sweep (defaults)", _time(lambda: alpha_sweep(progress=False))),
        _row("tabular quality_sweep (defaults)", _time(lambda: quality_sweep(progress=False))),
    ]


def main() -> None:
    np.set_printoptions(precision=3)
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}")
    print(f"{'what':<44} {'median':>10}   [min, max] over {REPEATS} runs")
    for row in bench_neural() + bench_tabular_cql() + bench_tabular():
        print(row, flush=True)


if __name__ == "__main__":
    main()
