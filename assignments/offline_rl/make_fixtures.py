"""Generate the hidden-test fixtures: seeded inputs and the reference's expected outputs.

Run by the release build as ``python make_fixtures.py OUTDIR``. Every expected value comes from
``reference/`` (``offline_rl.algorithms``); nothing here is typed by hand. Keys are
``<check>/<case>/<field>``; fields named ``expected_*`` are what ``hidden_checks.compare`` checks.

They go to two files because they have two readers: ``hidden_inputs.npz`` is copied into the
student's sandboxed kernel (which runs the student's functions on it), ``hidden_expected.npz``
stays with the trusted grading process, out of the kernel's reach.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from offline_rl import behavior
from offline_rl.algorithms import coverage, experiments, neural, tabular
from offline_rl.datasets import OfflineDataset
from torch import nn

MASTER = Path(__file__).with_name("master.py")

SEED = 20261125


def _coverage(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    for case, (n_states, n_actions, n) in enumerate([(6, 3, 40), (25, 4, 300), (12, 5, 7)]):
        p = f"coverage/case{case}"
        # Skewed state distribution so that some states are unvisited and pairs repeat.
        obs = rng.integers(0, max(2, n_states - 2), size=n).astype(np.int64)
        actions = rng.integers(0, n_actions - 1, size=n).astype(np.int64)
        ds = OfflineDataset(
            observations=obs,
            actions=actions,
            rewards=np.zeros(n, dtype=np.float32),
            next_observations=obs.copy(),
            terminals=np.zeros(n, dtype=bool),
            truncations=np.zeros(n, dtype=bool),
            episode_starts=np.array([0], dtype=np.int64),
        )
        counts = coverage.coverage_counts(ds, n_states, n_actions)
        policy = rng.integers(0, n_actions, size=n_states).astype(np.int64)
        fx[f"{p}/sizes"] = np.array([n_states, n_actions])
        fx[f"{p}/observations"], fx[f"{p}/actions"], fx[f"{p}/policy"] = obs, actions, policy
        fx[f"{p}/expected_counts"] = counts
        fx[f"{p}/counts"] = counts  # ood_fraction's input: the correct counts, not the student's
        fx[f"{p}/expected_ood_fraction"] = np.asarray(coverage.ood_fraction(counts, policy))


def _td_target(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    for case, (b, a, gamma) in enumerate([(8, 2, 0.99), (32, 4, 0.9), (5, 3, 0.5)]):
        p = f"td_target/case{case}"
        rewards = rng.normal(size=b).astype(np.float32)
        next_q = (3 * rng.normal(size=(b, a))).astype(np.float32)
        terminals = (rng.random(b) < 0.4).astype(np.float32)
        terminals[0], terminals[-1] = 1.0, 0.0  # both kinds always present
        y = neural.td_target(
            torch.tensor(rewards), torch.tensor(next_q), torch.tensor(terminals), gamma
        )
        fx[f"{p}/rewards"], fx[f"{p}/next_q_values"], fx[f"{p}/terminals"] = (
            rewards,
            next_q,
            terminals,
        )
        fx[f"{p}/gamma"] = np.array(gamma)
        fx[f"{p}/expected_y"] = y.numpy()
        fx[f"{p}/expected_detached"] = np.array(True)


def _bc_loss(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    # B != A in every case, so a softmax over the batch dimension cannot pass by accident.
    for case, (b, a, scale) in enumerate([(16, 2, 1.0), (64, 4, 3.0), (7, 5, 0.3)]):
        p = f"bc_loss/case{case}"
        logits = (scale * rng.normal(size=(b, a))).astype(np.float32)
        actions = rng.integers(0, a, size=b).astype(np.int64)
        fx[f"{p}/logits"], fx[f"{p}/actions"] = logits, actions
        fx[f"{p}/expected_loss"] = neural.bc_loss(
            torch.tensor(logits), torch.tensor(actions)
        ).numpy()


def _cql_penalty(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    for case, (b, a, scale) in enumerate([(16, 2, 1.0), (64, 4, 5.0), (9, 3, 40.0)]):
        p = f"cql_penalty/case{case}"
        q = (scale * rng.normal(size=(b, a))).astype(np.float32)
        actions = rng.integers(0, a, size=b).astype(np.int64)
        q_t = torch.tensor(q, requires_grad=True)
        value = neural.cql_penalty(q_t, torch.tensor(actions))
        value.backward()
        fx[f"{p}/q_values"], fx[f"{p}/actions"] = q, actions
        fx[f"{p}/expected_penalty"] = value.detach().numpy()
        fx[f"{p}/expected_grad"] = q_t.grad.numpy()


def _mlp(obs_dim: int, n_actions: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(obs_dim, 16), nn.ReLU(), nn.Linear(16, n_actions))


def _cql_loss(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    for case, (b, obs_dim, a, alpha, gamma) in enumerate(
        [(32, 4, 2, 1.0, 0.99), (16, 3, 3, 0.5, 0.9), (8, 2, 4, 2.0, 0.8)]
    ):
        p = f"cql_loss/case{case}"
        q_net, target_net = _mlp(obs_dim, a, SEED + case), _mlp(obs_dim, a, SEED + 100 + case)
        batch_np = {
            "observations": rng.normal(size=(b, obs_dim)).astype(np.float32),
            "actions": rng.integers(0, a, size=b).astype(np.int64),
            "rewards": rng.normal(size=b).astype(np.float32),
            "next_observations": rng.normal(size=(b, obs_dim)).astype(np.float32),
            "terminals": (rng.random(b) < 0.3).astype(np.float32),
        }
        batch_np["terminals"][0] = 1.0
        batch = {k: torch.tensor(v) for k, v in batch_np.items()}
        total, info = neural.cql_loss(q_net, target_net, batch, alpha, gamma)
        total.backward()
        for name, net in (("q_net", q_net), ("target_net", target_net)):
            for key, param in zip(("w0", "b0", "w1", "b1"), net.parameters()):
                fx[f"{p}/{name}/{key}"] = param.detach().numpy().copy()
        for key, value in batch_np.items():
            fx[f"{p}/{key}"] = value
        fx[f"{p}/alpha"], fx[f"{p}/gamma"] = np.array(alpha), np.array(gamma)
        fx[f"{p}/expected_total"] = total.detach().numpy()
        fx[f"{p}/expected_bellman_loss"] = np.array(info["bellman_loss"])
        fx[f"{p}/expected_cql_penalty"] = np.array(info["cql_penalty"])
        fx[f"{p}/expected_q_grad"] = torch.cat(
            [q.grad.flatten() for q in q_net.parameters()]
        ).numpy()
        fx[f"{p}/expected_target_untouched"] = np.array(True)


def _put_dataset(fx: dict[str, np.ndarray], prefix: str, ds: OfflineDataset) -> None:
    for field, value in ds.as_dict().items():
        fx[f"{prefix}/{field}"] = value


def _tabular_q(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    cases = [
        ("stitch", behavior.stitching_dataset(), 0.0, 300),
        ("stitch", behavior.stitching_dataset(), 1.0, 300),
        (
            "cliff",
            behavior.narrow_expert_dataset("cliff", n_episodes=5, epsilon=0.2, seed=3),
            3.0,
            300,
        ),
        ("open", behavior.quality_dataset("open", 0.5, 6, seed=4), 0.5, 200),
    ]
    from offline_rl.envs import get_layout

    sizes = [(get_layout(name).n_states, get_layout(name).n_actions, get_layout(name).gamma)
             for name, *_ in cases]
    # On the grids every terminal transition enters a state the data never leave from, whose Q
    # stays 0, so a missing (1 - done) mask changes nothing there. This synthetic dataset's
    # terminal transitions enter states it also visits, so the mask matters.
    n = 60
    terminals = rng.random(n) < 0.3
    synthetic = OfflineDataset(
        observations=rng.integers(0, 6, size=n).astype(np.int64),
        actions=rng.integers(0, 3, size=n).astype(np.int64),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=rng.integers(0, 6, size=n).astype(np.int64),
        terminals=terminals,
        truncations=np.zeros(n, dtype=bool),
        episode_starts=np.concatenate([[0], np.flatnonzero(terminals[:-1]) + 1]).astype(np.int64),
    )
    cases.append(("synthetic", synthetic, 0.5, 300))
    sizes.append((6, 3, 0.9))
    for case, ((_, ds, alpha, n_iters), (n_states, n_actions, gamma)) in enumerate(
        zip(cases, sizes)
    ):
        p = f"tabular_q/case{case}"
        _put_dataset(fx, f"{p}/data", ds)
        fx[f"{p}/sizes"] = np.array([n_states, n_actions, n_iters])
        fx[f"{p}/gamma"], fx[f"{p}/alpha"] = np.array(gamma), np.array(alpha)
        fx[f"{p}/expected_q"] = tabular.offline_q_learning(
            ds, n_states, n_actions, gamma, alpha=alpha, n_iters=n_iters
        )


def _bcq(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    for case, (s, a, threshold) in enumerate([(8, 3, 0.3), (20, 4, 0.5), (6, 4, 1.0), (5, 2, 0.0)]):
        p = f"bcq/case{case}"
        q = rng.normal(size=(s, a))
        counts = rng.integers(0, 5, size=(s, a)) * (rng.random((s, a)) < 0.6)
        counts[0] = 0  # an unvisited state always present
        fx[f"{p}/q"], fx[f"{p}/counts"], fx[f"{p}/threshold"] = (
            q,
            counts.astype(np.int64),
            np.array(threshold),
        )
        fx[f"{p}/expected_policy"] = tabular.discrete_bcq_policy(q, counts, threshold)


def _alpha(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    p = "alpha/case0"
    ds = behavior.stitching_dataset()
    alphas = (0.0, 0.3, 3.0, 100.0)
    result = experiments.alpha_sweep(alphas, "stitch", ds, progress=False)
    _put_dataset(fx, f"{p}/data", ds)
    fx[f"{p}/layout"], fx[f"{p}/alphas"] = np.array("stitch"), np.array(alphas)
    fx[f"{p}/expected_returns"] = result["returns"]
    fx[f"{p}/expected_ood_q"] = result["mean_q_unseen"]


def _quality(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    p = "quality/case0"
    qualities, seeds, n_episodes, alpha = (0.0, 0.5, 1.0), (0, 1), 4, 1.0
    result = experiments.quality_sweep(qualities, seeds, "open", n_episodes, alpha, progress=False)
    fx[f"{p}/qualities"], fx[f"{p}/seeds"] = np.array(qualities), np.array(seeds)
    fx[f"{p}/layout"], fx[f"{p}/n_episodes"], fx[f"{p}/alpha"] = (
        np.array("open"),
        np.array(n_episodes),
        np.array(alpha),
    )
    for key in ("bc", "naive", "cql"):
        fx[f"{p}/expected_{key}"] = result[key]


def _stitching(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    # case0 is the chapter's dataset; the others change the family mix and alpha, so numbers
    # copied from case0 (or from the dataset's best episode) fail them.
    for case, (n_a, n_b, alpha) in enumerate([(6, 4, 1.0), (3, 5, 1.0), (6, 4, 100.0)]):
        p = f"stitching/case{case}"
        ds = behavior.stitching_dataset(n_a, n_b)
        result = experiments.stitching(alpha=alpha, dataset=ds)
        _put_dataset(fx, f"{p}/data", ds)
        fx[f"{p}/alpha"] = np.array(alpha)
        for key in ("best_trajectory_return", "bc_return", "naive_q_return", "cql_return"):
            fx[f"{p}/expected_{key}"] = np.array(result[key])


def _solution_value(name: str) -> str:
    """The value of ``name = ...  # SOLUTION`` in the master: the answer key's single source."""
    import re

    match = re.search(rf"^{name} = (.+?)\s+# SOLUTION$", MASTER.read_text(), re.M)
    if not match:
        raise SystemExit(f"make_fixtures: no `{name} = ...  # SOLUTION` line in {MASTER.name}")
    return match.group(1)


def _conceptual(fx: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    import ast

    for question in ("q10", "q11"):
        answer = ast.literal_eval(_solution_value(f"{question}_answer"))
        fx[f"{question}/expected_answer"] = np.array(float("abcd".index(answer)))
    # q12: the CQL penalty of a Q constant over 4 actions, computed by the reference.
    q = torch.full((5, 4), 1.7)
    fx["q12/expected_answer"] = (
        neural.cql_penalty(q, torch.zeros(5, dtype=torch.int64)).double().numpy()
    )


def make_fixtures() -> dict[str, np.ndarray]:
    """All fixtures, from one seeded generator (same seed -> same bytes)."""
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    fx: dict[str, np.ndarray] = {}
    parts = (
        _coverage,
        _td_target,
        _bc_loss,
        _cql_penalty,
        _cql_loss,
        _tabular_q,
        _bcq,
        _alpha,
        _quality,
        _stitching,
        _conceptual,
    )
    for part in parts:
        part(fx, rng)
    return fx


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed entry timestamps and order, so equal arrays give equal bytes
    (``np.savez`` stamps each entry with the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(2000, 1, 1, 0, 0, 0)), buffer.getvalue())


def split(fx: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected): a key is expected when its last part starts with ``expected_``."""
    is_expected = {k: k.rsplit("/", 1)[-1].startswith("expected_") for k in fx}
    inputs = {k: v for k, v in fx.items() if not is_expected[k]}
    expected = {k: v for k, v in fx.items() if is_expected[k]}
    return inputs, expected


def main(outdir: str) -> None:
    inputs, expected = split(make_fixtures())
    for name, arrays in (("hidden_inputs.npz", inputs), ("hidden_expected.npz", expected)):
        write_npz(Path(outdir) / name, arrays)
        print(f"wrote {len(arrays)} arrays to {Path(outdir) / name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
