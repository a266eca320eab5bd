"""The reference CQL beside d3rlpy's ``DiscreteCQL``, on the same CartPole data (not a test).

    make bench-d3rlpy          # creates build/bench-venv with d3rlpy, then runs this script
    python benchmarks/bench_d3rlpy.py --d3rlpy-python build/bench-venv/bin/python [--quick]

d3rlpy never enters the course environment: each measurement is a fresh worker process, the
reference's under this interpreter, d3rlpy's under ``--d3rlpy-python`` (a separate venv), both
limited to one torch thread, and the runs of the two libraries are interleaved so that a
neighbour's load on this shared machine hits both alike. Per worker: seconds of training
(setup excluded), peak RSS of the whole process (imports included: that is what a user pays),
and, after the fixed budget, the greedy return over 10 CartPole episodes.

Same for both: the dataset, ``make_cartpole_dataset`` exported once with
``OfflineDataset.to_minari`` and read by each worker through Minari (the reference with
``OfflineDataset.from_minari``, d3rlpy from ``minari.load_dataset``'s episodes, under its own
gymnasium 1.0), a 4-256-256-2 ReLU MLP, Adam (lr 3e-4, betas (0.9, 0.999), eps 1e-8),
gamma 0.99, alpha 1, uniform minibatches, the number of gradient steps, the seeds, the
evaluation episodes. Differences the two designs impose are printed with the table
(``DIFFERENCES``).

Returns are reported as the field reports them (rliable, Agarwal et al. 2021): over 10 training
seeds, the interquartile mean (IQM) with a 95 % percentile-bootstrap confidence interval, the
IQM difference with its interval, and the probability that the reference beats d3rlpy on a
random seed (the Mann-Whitney statistic), computed here in numpy (``iqm``, ``bootstrap_ci``,
``probability_of_improvement``) the way rliable does, without its dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA_QUALITY, DATA_EPISODES, DATA_SEED = "poor", 1000, 0
LR, GAMMA, ALPHA, HIDDEN = 3e-4, 0.99, 1.0, (256, 256)
EVAL_EPISODES, EVAL_SEED = 10, 1000
#: The Minari id the orchestrator exports the data under (in a temporary MINARI_DATASETS_PATH).
MINARI_ID = "offline_rl/cartpole-poor-v0"
#: Bootstrap resamples for the confidence intervals (rliable's default is 50,000 as well).
BOOTSTRAP_REPS, BOOTSTRAP_SEED = 50_000, 0
DIFFERENCES = [
    "target network: {reference_target}; d3rlpy can only copy it, every {interval} steps "
    "(target_update_interval={interval}: {same})",
    "Bellman target: reference max_a' Q_target(s', a'); d3rlpy Double "
    "DQN (argmax by the Q-network, value by the target), one more forward pass",
    "Bellman loss: {reference_loss}; d3rlpy Huber (delta 1)",
    "d3rlpy drops the last transition of a time-limit-truncated episode (its s' is not stored); "
    "the reference keeps it and bootstraps from s'",
]


# --------------------------------------------------------------------------- statistics
def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean along the last axis: the mean of the middle 50 % of the runs.

    Args:
        scores: (..., n) returns of n runs.
    Returns:
        (...,) the mean after dropping ``floor(n / 4)`` runs at each end (scipy's
        ``trim_mean(x, 0.25)``, what rliable's ``aggregate_iqm`` computes).
    """
    n = scores.shape[-1]
    cut = int(0.25 * n)
    return np.sort(scores, axis=-1)[..., cut : n - cut].mean(axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 for a random run of each (rliable's Mann-Whitney form).

    Args:
        x: (..., n) runs of the first algorithm; y: (..., m) runs of the second.
    Returns:
        (...,) the probability.
    """
    diff = x[..., :, None] - y[..., None, :]
    return (diff > 0).mean(axis=(-1, -2)) + 0.5 * (diff == 0).mean(axis=(-1, -2))


def bootstrap_ci(
    statistic: Callable[..., np.ndarray],
    *samples: np.ndarray,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap interval of ``statistic(*samples)``.

    Each (n_i,) sample is resampled with replacement on its own (runs of different algorithms
    are independent), ``reps`` times at once: ``statistic`` gets (reps, n_i) arrays.
    Returns (estimate, low, high).
    """
    rng = np.random.default_rng(seed)
    resampled = [s[rng.integers(0, s.shape[0], size=(reps, s.shape[0]))] for s in samples]
    values = statistic(*resampled)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(statistic(*samples)), float(low), float(high)


# --------------------------------------------------------------------------- workers
def _load_reference(minari_id: str):  # -> OfflineDataset, imported lazily inside the worker
    from offline_rl.datasets import OfflineDataset

    return OfflineDataset.from_minari(minari_id)


def _load_d3rlpy(minari_id: str):  # -> d3rlpy MDPDataset, straight from Minari's episodes
    import d3rlpy
    import minari

    episodes = list(minari.load_dataset(minari_id).iterate_episodes())
    # Minari stores s_0..s_T per episode (T + 1 observations for T actions); d3rlpy wants the T
    # states acted in, and reads the episode boundaries from terminals and timeouts.
    terminals = np.concatenate([e.terminations for e in episodes])
    # d3rlpy refuses a step that is both (gymnasium reports both when the pole falls on the
    # time limit's last step): the terminal state wins, as in the reference (no bootstrap).
    timeouts = np.concatenate([e.truncations for e in episodes]) & ~terminals
    return d3rlpy.dataset.MDPDataset(
        observations=np.concatenate([e.observations[:-1] for e in episodes]),
        actions=np.concatenate([e.actions for e in episodes]),
        rewards=np.concatenate([e.rewards for e in episodes]).astype(np.float32),
        terminals=terminals.astype(np.float32),
        timeouts=timeouts.astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.DISCRETE,
        action_size=2,
    )


def _worker_reference(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from offline_rl.algorithms.neural import CQL, CQLConfig
    from offline_rl.training import evaluate_policy, train_offline

    data = _load_reference(args.minari_id)
    config = CQLConfig(alpha=ALPHA, gamma=GAMMA, lr=LR, hidden=HIDDEN, seed=args.seed)
    agent = CQL(data.observations.shape[1], 2, config)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_offline(agent, data, args.steps, args.batch, seed=args.seed, progress=False)
    out = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}
    if args.evaluate:
        with torch.no_grad():
            out["return"] = float(
                evaluate_policy("CartPole-v1", agent.act, EVAL_EPISODES, seed=EVAL_SEED).mean()
            )
    return out


def _worker_d3rlpy(args: argparse.Namespace) -> dict[str, float]:
    import d3rlpy
    from d3rlpy.logging import NoopAdapterFactory
    from offline_rl.training import evaluate_policy

    dataset = _load_d3rlpy(args.minari_id)
    d3rlpy.seed(args.seed)
    cql = d3rlpy.algos.DiscreteCQLConfig(
        learning_rate=LR,
        optim_factory=d3rlpy.optimizers.AdamFactory(),
        encoder_factory=d3rlpy.models.VectorEncoderFactory(hidden_units=list(HIDDEN)),
        batch_size=args.batch,
        gamma=GAMMA,
        alpha=ALPHA,
        target_update_interval=args.interval,
    ).create(device="cpu:0")
    cql.build_with_dataset(dataset)
    start, cpu_start = time.perf_counter(), time.process_time()
    cql.fit(
        dataset,
        n_steps=args.steps,
        n_steps_per_epoch=args.steps,
        logger_adapter=NoopAdapterFactory(),
        show_progress=False,
    )
    out = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}
    if args.evaluate:

        def act(obs: np.ndarray) -> int:
            return int(cql.predict(np.asarray(obs, dtype=np.float32)[None])[0])

        out["return"] = float(
            evaluate_policy("CartPole-v1", act, EVAL_EPISODES, seed=EVAL_SEED).mean()
        )
    return out


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    run = _worker_reference if args.worker == "reference" else _worker_d3rlpy
    out = run(args)
    # ru_maxrss is in KiB on Linux: the peak resident memory of this whole process.
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- orchestration
def _run_worker(
    python: str,
    impl: str,
    minari_id: str,
    batch: int,
    steps: int,
    seed: int,
    interval: int,
    evaluate: bool,
) -> dict[str, float]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # The d3rlpy venv does not have the course package installed: import it from source.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "reference"), os.environ.get("PYTHONPATH")])
        ),
    }
    cmd = [
        python,
        __file__,
        "--worker",
        impl,
        "--minari-id",
        minari_id,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--interval",
        str(interval),
    ]
    if evaluate:
        cmd.append("--evaluate")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{impl} worker failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def _target_schedule() -> tuple[int, str, str]:
    """d3rlpy's copy interval closest to the reference's target update, and the words for it.

    A Polyak average with rate tau every k steps forgets the old target over about k / tau
    steps, the time constant of a hard copy every k / tau steps."""
    from offline_rl.algorithms.neural import CQLConfig

    config = CQLConfig()
    interval = max(1, round(config.target_update_interval / config.tau))
    if config.tau == 1.0:
        return interval, f"the reference copies it every {interval} steps", "the same schedule"
    words = f"the reference moves it by tau = {config.tau} every " + (
        "step" if config.target_update_interval == 1 else f"{config.target_update_interval} steps"
    )
    return interval, words, "the same time constant"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d3rlpy-python", default=str(ROOT / "build/bench-venv/bin/python"))
    parser.add_argument(
        "--timing-steps",
        type=int,
        default=1_000,
        help="gradient steps of each timing run (batch 32 and 256)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=10_000,
        help="gradient steps at batch 256 before the return is measured",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(range(10)),
        help="training seeds of the return runs (the IQM is over these)",
    )
    parser.add_argument(
        "--timing-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seeds of the timing pairs (batch 32 and 256)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget, to test the script")
    parser.add_argument("--worker", choices=["reference", "d3rlpy"], help=argparse.SUPPRESS)
    parser.add_argument("--minari-id", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.quick:
        args.timing_steps, args.budget = 100, 200
        args.seeds, args.timing_seeds = [0, 1, 2, 3], [0]
    if not Path(args.d3rlpy_python).exists():
        sys.exit(f"no d3rlpy interpreter at {args.d3rlpy_python}: run `make bench-d3rlpy`.")

    from offline_rl.cartpole import make_cartpole_dataset
    from offline_rl.datasets import OfflineDataset

    interval, reference_target, same = _target_schedule()
    pythons = {"reference": sys.executable, "d3rlpy": args.d3rlpy_python}
    results: dict[tuple[str, int, bool], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Workers inherit the folder: both read the data through Minari's loader.
        os.environ["MINARI_DATASETS_PATH"] = str(Path(tmp) / "minari")
        data = make_cartpole_dataset(DATA_QUALITY, DATA_EPISODES, seed=DATA_SEED, progress=False)
        data.to_minari(MINARI_ID, "CartPole-v1")
        back = OfflineDataset.from_minari(MINARI_ID)
        assert all(np.array_equal(a, getattr(back, k)) for k, a in data.as_dict().items())
        print(
            f"data: make_cartpole_dataset({DATA_QUALITY!r}, {DATA_EPISODES}, seed={DATA_SEED})"
            f", {len(data):,} transitions, behaviour return {data.episode_returns().mean():.1f}"
            f"; exported as Minari dataset {MINARI_ID!r}"
        )
        # Interleaved: seed by seed, batch by batch, the two libraries back to back.
        # Timing: short runs, the two libraries back to back, so that a neighbour's load on
        # this shared machine hits both runs of a pair alike. Then the returns after the budget.
        plan = [
            (seed, batch, args.timing_steps, False)
            for seed in args.timing_seeds
            for batch in (32, 256)
        ]
        plan += [(seed, 256, args.budget, True) for seed in args.seeds]
        for seed, batch, steps, evaluate in plan:
            for impl in ("reference", "d3rlpy"):
                out = _run_worker(
                    pythons[impl], impl, MINARI_ID, batch, steps, seed, interval, evaluate
                )
                out["per_1k"] = out["seconds"] / steps * 1000
                out["cpu_per_1k"] = out["cpu_seconds"] / steps * 1000
                results.setdefault((impl, batch, evaluate), []).append(out)
                extra = f", return {out['return']:.1f}" if evaluate else ""
                print(
                    f"  seed {seed} {impl:<9} b{batch:<3} {steps:>6} steps: "
                    f"{out['cpu_per_1k']:.2f} CPU s/1k ({out['per_1k']:.2f} wall), "
                    f"{out['peak_rss_mb']:.0f} MB{extra}",
                    flush=True,
                )
    _print_table(
        results,
        args,
        DIFFERENCES[0].format(reference_target=reference_target, interval=interval, same=same),
    )
    # What the whole run cost: this process and every worker (user + system CPU time).
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(
        f"\nthis run: {cpu / 60:.1f} CPU-minutes ({len(args.seeds)} return seeds, "
        f"{len(args.timing_seeds)} timing seeds)."
    )


def _reference_loss() -> str:
    """The reference's Bellman loss as shipped (``CQLConfig().huber``)."""
    from offline_rl.algorithms.neural import CQLConfig

    if CQLConfig().huber:
        return "reference Huber (delta 1) too, its default (CQLConfig.huber)"
    return "reference 1/2 (Q - y)^2 (the same for |Q - y| <= 1, quadratic beyond)"


def _print_table(
    results: dict[tuple[str, int, bool], list[dict[str, float]]],
    args: argparse.Namespace,
    target_difference: str,
) -> None:
    def med(impl: str, batch: int, key: str, evaluated: bool = False) -> float:
        return statistics.median(r[key] for r in results[(impl, batch, evaluated)])

    def peak(impl: str) -> float:
        return max(
            r["peak_rss_mb"] for key, runs in results.items() if key[0] == impl for r in runs
        )

    def speedup(batch: int) -> float:
        # Median over seeds of the ratio of two back-to-back runs' CPU times.
        pairs = zip(results[("d3rlpy", batch, False)], results[("reference", batch, False)])
        return statistics.median(d["cpu_per_1k"] / r["cpu_per_1k"] for d, r in pairs)

    # CPU seconds of the (single-threaded) worker: on a shared machine a neighbour's load
    # stretches wall time by whatever share of a core it takes, CPU time hardly at all.
    ref32, d32 = med("reference", 32, "cpu_per_1k"), med("d3rlpy", 32, "cpu_per_1k")
    ref256, d256 = med("reference", 256, "cpu_per_1k"), med("d3rlpy", 256, "cpu_per_1k")
    wall = {
        (impl, b): med(impl, b, "per_1k") for impl in ("reference", "d3rlpy") for b in (32, 256)
    }
    x32, x256 = speedup(32), speedup(256)
    ref_mem, d_mem = peak("reference"), peak("d3rlpy")
    seeds = f"{len(args.seeds)} seeds ({args.seeds[0]}..{args.seeds[-1]})"
    ref_runs = np.array([r["return"] for r in results[("reference", 256, True)]])
    d_runs = np.array([r["return"] for r in results[("d3rlpy", 256, True)]])
    ref_iqm, d_iqm = bootstrap_ci(iqm, ref_runs), bootstrap_ci(iqm, d_runs)
    diff = bootstrap_ci(lambda a, b: iqm(a) - iqm(b), ref_runs, d_runs)
    p_better = bootstrap_ci(probability_of_improvement, ref_runs, d_runs)

    def returns(impl: str) -> str:
        return " / ".join(f"{r['return']:.0f}" for r in results[(impl, 256, True)])

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows = [
        (
            "CPU s/1k steps, batch 32 (wall)",
            f"{d32:.2f} ({wall['d3rlpy', 32]:.2f})",
            f"{ref32:.2f} ({wall['reference', 32]:.2f})",
            f"{x32:.1f}x faster",
            ">= 3x",
            verdict(x32 >= 3),
        ),
        (
            "CPU s/1k steps, batch 256 (wall)",
            f"{d256:.2f} ({wall['d3rlpy', 256]:.2f})",
            f"{ref256:.2f} ({wall['reference', 256]:.2f})",
            f"{x256:.1f}x faster",
            ">= 3x",
            verdict(x256 >= 3),
        ),
        (
            "peak RSS (MB)",
            f"{d_mem:.0f}",
            f"{ref_mem:.0f}",
            f"{d_mem / ref_mem:.2f}x",
            "<= d3rlpy",
            verdict(ref_mem <= d_mem),
        ),
        (
            f"return after {args.budget:,} steps at b256, IQM [95 % CI], {seeds}",
            f"{d_iqm[0]:.1f} [{d_iqm[1]:.1f}, {d_iqm[2]:.1f}]",
            f"{ref_iqm[0]:.1f} [{ref_iqm[1]:.1f}, {ref_iqm[2]:.1f}]",
            f"{diff[0]:+.1f} [{diff[1]:+.1f}, {diff[2]:+.1f}]",
            "CI of the difference reaches >= 0",
            verdict(diff[2] >= 0),
        ),
        (
            "P(reference beats d3rlpy on a random seed) [95 % CI]",
            "",
            "",
            f"{p_better[0]:.2f} [{p_better[1]:.2f}, {p_better[2]:.2f}]",
            "(reported)",
            "",
        ),
        ("returns per seed", returns("d3rlpy"), returns("reference"), "", "", ""),
    ]
    print()
    print("| | d3rlpy 2.8.1 `DiscreteCQL.fit` | reference `train_offline(CQL)` | ratio | goal | |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    timing_seeds = ", ".join(map(str, args.timing_seeds))
    print(
        f"\nspeed: medians over timing seeds {timing_seeds} (speed-up: median over the "
        f"back-to-back pairs of the ratio of CPU times); one torch thread per process; timing "
        f"runs {args.timing_steps:,} steps, return runs {args.budget:,} steps at b256. Returns: "
        f"interquartile mean over {seeds}, 95 % percentile bootstrap ({BOOTSTRAP_REPS:,} "
        "resamples of each library's runs), as rliable reports them."
    )
    print("Differences the designs impose:")
    for line in [target_difference, *DIFFERENCES[1:]]:
        print("  - " + line.format(reference_loss=_reference_loss()))


if __name__ == "__main__":
    main()
