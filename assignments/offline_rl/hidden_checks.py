"""Hidden checks for the offline_rl assignment (an autograder-only file: never shipped to students).

Each check is two separate steps, so the comparison runs outside the student's kernel:

1. ``outputs_<name>(student functions...) -> dict[str, np.ndarray]`` runs the student's code on the
   fixture inputs and records plain arrays (values, shapes, flags). It never sees expected values.
2. ``compare(name, outputs)`` compares those arrays with the expected values that
   ``make_fixtures.py`` generated from ``reference/`` and raises ``AssertionError`` with a message
   that says which case failed and how.

``CHECKS`` names every check; the grader (``grading/``) runs step 1 in the sandboxed kernel on
``hidden_inputs.npz`` and step 2 in the trusted process with ``hidden_expected.npz``, which the
kernel cannot read. ``check(name, ...)`` runs both in one process (otter's own self-check).

Tolerances accept every correct implementation (float32 or float64, gather or indexing,
``F.cross_entropy`` or ``log_softmax``, hand-written stable log-sum-exp) and reject the real
mistakes (see ``TOLERANCES``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

INPUTS = Path(__file__).with_name("hidden_inputs.npz")
EXPECTED = Path(__file__).with_name("hidden_expected.npz")

#: (rtol, atol) per check. float32 arithmetic differs between correct implementations by ~1e-6;
#: the closest mistake measured (the (B,)/(B,1) broadcast in the Bellman error) moves the loss by
#: more than 1e-2, so 1e-4 separates them with room on both sides.
TOLERANCES: dict[str, tuple[float, float]] = {
    "coverage": (0.0, 0.0),
    "td_target": (1e-4, 1e-5),
    "bc_loss": (1e-4, 1e-5),
    "cql_penalty": (1e-4, 1e-5),
    "cql_loss": (1e-4, 1e-5),
    "tabular_q": (1e-3, 1e-3),
    "bcq": (0.0, 0.0),
    # Returns on the deterministic grids are whole numbers: 0.5 accepts float noise only.
    "alpha": (1e-3, 1e-3),
    "quality": (0.0, 0.5),
    "stitching": (0.0, 0.5),
    "q10": (0.0, 0.0),
    "q11": (0.0, 0.0),
    "q12": (0.0, 1e-3),
}


def _load(path: Path = INPUTS) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _cases(fixtures: dict[str, np.ndarray], name: str) -> list[str]:
    prefix = f"{name}/"
    return sorted({k.split("/")[1] for k in fixtures if k.startswith(prefix)})


def _as_array(value: Any) -> np.ndarray:
    """A student's return value (tensor, array, float) as a float64 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _run(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


def _record(outputs: dict[str, np.ndarray], key: str, value: Any, error: str | None) -> None:
    if error is not None:
        outputs[f"{key}/error"] = np.array(error)
    elif value is None:
        outputs[f"{key}/error"] = np.array("returned None (is the function implemented?)")
    else:
        arr = _as_array(value)
        outputs[f"{key}/value"] = arr
        outputs[f"{key}/shape"] = np.array(arr.shape, dtype=np.int64)


# ----------------------------------------------------------------------------- step 1: outputs
def outputs_coverage(coverage_counts: Callable, ood_fraction: Callable) -> dict[str, np.ndarray]:
    from offline_rl.datasets import OfflineDataset

    fx, out = _load(), {}
    for case in _cases(fx, "coverage"):
        p = f"coverage/{case}"
        n_states, n_actions = (int(v) for v in fx[f"{p}/sizes"])
        obs, actions = fx[f"{p}/observations"], fx[f"{p}/actions"]
        n = obs.shape[0]
        dataset = OfflineDataset(
            observations=obs,
            actions=actions,
            rewards=np.zeros(n, dtype=np.float32),
            next_observations=obs.copy(),
            terminals=np.zeros(n, dtype=bool),
            truncations=np.zeros(n, dtype=bool),
            episode_starts=np.array([0], dtype=np.int64),
        )
        counts, err = _run(coverage_counts, dataset, n_states, n_actions)
        _record(out, f"{p}/counts", counts, err)
        frac, err = _run(ood_fraction, fx[f"{p}/counts"], fx[f"{p}/policy"])
        _record(out, f"{p}/ood_fraction", frac, err)
    return out


def outputs_td_target(td_target: Callable) -> dict[str, np.ndarray]:
    import torch

    fx, out = _load(), {}
    for case in _cases(fx, "td_target"):
        p = f"td_target/{case}"
        next_q = torch.tensor(fx[f"{p}/next_q_values"], requires_grad=True)
        terminals = torch.tensor(fx[f"{p}/terminals"])
        y, err = _run(
            td_target, torch.tensor(fx[f"{p}/rewards"]), next_q, terminals, float(fx[f"{p}/gamma"])
        )
        _record(out, f"{p}/y", y, err)
        if err is None and y is not None:
            out[f"{p}/detached"] = np.array(not bool(getattr(y, "requires_grad", False)))
    return out


def outputs_bc_loss(bc_loss: Callable) -> dict[str, np.ndarray]:
    import torch

    fx, out = _load(), {}
    for case in _cases(fx, "bc_loss"):
        p = f"bc_loss/{case}"
        loss, err = _run(bc_loss, torch.tensor(fx[f"{p}/logits"]), torch.tensor(fx[f"{p}/actions"]))
        _record(out, f"{p}/loss", loss, err)
    return out


def outputs_cql_penalty(cql_penalty: Callable) -> dict[str, np.ndarray]:
    import torch

    fx, out = _load(), {}
    for case in _cases(fx, "cql_penalty"):
        p = f"cql_penalty/{case}"
        q = torch.tensor(fx[f"{p}/q_values"], requires_grad=True)
        value, err = _run(cql_penalty, q, torch.tensor(fx[f"{p}/actions"]))
        _record(out, f"{p}/penalty", value, err)
        if err is None and value is not None and getattr(value, "requires_grad", False):
            value.sum().backward()
            _record(out, f"{p}/grad", q.grad, None)
    return out


def _mlp_from(fx: dict[str, np.ndarray], prefix: str) -> Any:
    import torch
    from torch import nn

    w0, b0, w1, b1 = (fx[f"{prefix}/{k}"] for k in ("w0", "b0", "w1", "b1"))
    net = nn.Sequential(
        nn.Linear(w0.shape[1], w0.shape[0]), nn.ReLU(), nn.Linear(w1.shape[1], w1.shape[0])
    )
    with torch.no_grad():
        for param, value in zip(net.parameters(), (w0, b0, w1, b1)):
            param.copy_(torch.tensor(value))
    return net


def outputs_cql_loss(cql_loss: Callable) -> dict[str, np.ndarray]:
    import torch

    fx, out = _load(), {}
    for case in _cases(fx, "cql_loss"):
        p = f"cql_loss/{case}"
        q_net, target_net = _mlp_from(fx, f"{p}/q_net"), _mlp_from(fx, f"{p}/target_net")
        batch = {
            k: torch.tensor(fx[f"{p}/{k}"])
            for k in ("observations", "actions", "rewards", "next_observations", "terminals")
        }
        result, err = _run(
            cql_loss, q_net, target_net, batch, float(fx[f"{p}/alpha"]), float(fx[f"{p}/gamma"])
        )
        if err is None and not (isinstance(result, tuple) and len(result) == 2):
            err = f"must return (total_loss, info), got {type(result).__name__}"
        if err is not None:
            _record(out, f"{p}/total", None, err)
            continue
        total, info = result
        _record(out, f"{p}/total", total, None)
        for key in ("bellman_loss", "cql_penalty"):
            value = info.get(key) if isinstance(info, dict) else None
            _record(out, f"{p}/{key}", value, None if value is not None else f"info has no {key!r}")
        if getattr(total, "requires_grad", False):
            total.backward()
            grads = [q.grad for q in q_net.parameters()]
            flat = torch.cat([g.flatten() if g is not None else torch.zeros(0) for g in grads])
            _record(out, f"{p}/q_grad", flat, None)
            leaked = any(
                t.grad is not None and bool(t.grad.abs().sum() > 0) for t in target_net.parameters()
            )
            out[f"{p}/target_untouched"] = np.array(not leaked)
    return out


def _dataset_from(fx: dict[str, np.ndarray], prefix: str) -> Any:
    from offline_rl.datasets import OfflineDataset

    fields = (
        "observations",
        "actions",
        "rewards",
        "next_observations",
        "terminals",
        "truncations",
        "episode_starts",
    )
    return OfflineDataset(**{f: fx[f"{prefix}/{f}"] for f in fields})


def outputs_tabular_q(offline_q_learning: Callable) -> dict[str, np.ndarray]:
    fx, out = _load(), {}
    for case in _cases(fx, "tabular_q"):
        p = f"tabular_q/{case}"
        n_states, n_actions, n_iters = (int(v) for v in fx[f"{p}/sizes"])
        gamma, alpha = float(fx[f"{p}/gamma"]), float(fx[f"{p}/alpha"])
        q, err = _run(
            offline_q_learning,
            _dataset_from(fx, f"{p}/data"),
            n_states,
            n_actions,
            gamma,
            alpha,
            n_iters,
        )
        _record(out, f"{p}/q", q, err)
    return out


def outputs_bcq(bcq_policy: Callable) -> dict[str, np.ndarray]:
    fx, out = _load(), {}
    for case in _cases(fx, "bcq"):
        p = f"bcq/{case}"
        policy, err = _run(
            bcq_policy, fx[f"{p}/q"].copy(), fx[f"{p}/counts"].copy(), float(fx[f"{p}/threshold"])
        )
        _record(out, f"{p}/policy", policy, err)
    return out


def outputs_alpha(alpha_experiment: Callable) -> dict[str, np.ndarray]:
    fx, out = _load(), {}
    for case in _cases(fx, "alpha"):
        p = f"alpha/{case}"
        alphas = [float(a) for a in fx[f"{p}/alphas"]]
        result, err = _run(
            alpha_experiment, _dataset_from(fx, f"{p}/data"), str(fx[f"{p}/layout"]), alphas
        )
        for key in ("returns", "ood_q"):
            value = result.get(key) if isinstance(result, dict) else None
            _record(
                out,
                f"{p}/{key}",
                value,
                err if err else (None if value is not None else f"no key {key!r}"),
            )
    return out


def outputs_quality(quality_experiment: Callable) -> dict[str, np.ndarray]:
    fx, out = _load(), {}
    for case in _cases(fx, "quality"):
        p = f"quality/{case}"
        args = ([float(q) for q in fx[f"{p}/qualities"]], [int(s) for s in fx[f"{p}/seeds"]])
        kwargs = {
            "layout_name": str(fx[f"{p}/layout"]),
            "n_episodes": int(fx[f"{p}/n_episodes"]),
            "alpha": float(fx[f"{p}/alpha"]),
        }
        try:
            result, err = quality_experiment(*args, **kwargs), None
        except Exception as exc:
            result, err = None, f"{type(exc).__name__}: {exc}"
        for key in ("bc", "naive", "cql"):
            value = result.get(key) if isinstance(result, dict) else None
            _record(
                out,
                f"{p}/{key}",
                value,
                err if err else (None if value is not None else f"no key {key!r}"),
            )
    return out


STITCH_KEYS = ("best_trajectory_return", "bc_return", "naive_q_return", "cql_return")


def outputs_stitching(stitching_experiment: Callable) -> dict[str, np.ndarray]:
    fx, out = _load(), {}
    for case in _cases(fx, "stitching"):
        p = f"stitching/{case}"
        result, err = _run(
            stitching_experiment, _dataset_from(fx, f"{p}/data"), "stitch", float(fx[f"{p}/alpha"])
        )
        for key in STITCH_KEYS:
            value = result.get(key) if isinstance(result, dict) else None
            _record(
                out,
                f"{p}/{key}",
                value,
                err if err else (None if value is not None else f"no key {key!r}"),
            )
    return out


def outputs_choice(question: str, answer: Any) -> dict[str, np.ndarray]:
    letters = "abcd"
    index = letters.index(answer) if isinstance(answer, str) and answer in letters else -1
    return {
        f"{question}/answer/value": np.asarray(float(index)),
        f"{question}/answer/shape": np.zeros(0, dtype=np.int64),
    }


def outputs_number(question: str, answer: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    try:
        _record(out, f"{question}/answer", float(answer), None)
    except (TypeError, ValueError):
        _record(out, f"{question}/answer", None, f"{answer!r} is not a number")
    return out


def outputs_q10(q10_answer: Any) -> dict[str, np.ndarray]:
    return outputs_choice("q10", q10_answer)


def outputs_q11(q11_answer: Any) -> dict[str, np.ndarray]:
    return outputs_choice("q11", q11_answer)


def outputs_q12(q12_answer: Any) -> dict[str, np.ndarray]:
    return outputs_number("q12", q12_answer)


#: check name -> step 1. The parameter names are the notebook globals the check is given.
CHECKS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "coverage": outputs_coverage,
    "td_target": outputs_td_target,
    "tabular_q": outputs_tabular_q,
    "bc_loss": outputs_bc_loss,
    "cql_penalty": outputs_cql_penalty,
    "cql_loss": outputs_cql_loss,
    "bcq": outputs_bcq,
    "alpha": outputs_alpha,
    "quality": outputs_quality,
    "stitching": outputs_stitching,
    "q10": outputs_q10,
    "q11": outputs_q11,
    "q12": outputs_q12,
}


def check(name: str, *notebook_values: Any) -> None:
    """Both steps in this process (for otter's in-kernel self-check and the instructor)."""
    compare(name, CHECKS[name](*notebook_values))


# ----------------------------------------------------------------------------- step 2: compare
def compare(
    name: str, outputs: dict[str, np.ndarray], fixtures: dict[str, np.ndarray] | None = None
) -> None:
    """Compare a check's outputs with the expected values; raise AssertionError on the first miss."""
    fx = _load(EXPECTED) if fixtures is None else fixtures
    rtol, atol = TOLERANCES.get(name, (0.0, 0.0))
    expected = {k: v for k, v in fx.items() if k.startswith(f"{name}/") and "/expected_" in k}
    if not expected:
        raise AssertionError(f"no fixtures for {name!r}: rebuild the release")
    keys = sorted(expected)
    # Errors and shapes first, for every case: "wrong shape" teaches more than a value that is off
    # (and a wrong shape often makes a derived output, such as a gradient, look merely off).
    for key in keys:
        out_key = key.replace("/expected_", "/")
        label = out_key.removeprefix(f"{name}/")
        if f"{out_key}/error" in outputs:
            raise AssertionError(
                f"hidden case {label}: your code raised {outputs[f'{out_key}/error']}"
            )
        if f"{out_key}/value" in outputs:
            got, want = np.shape(outputs[f"{out_key}/value"]), np.shape(expected[key])
            if tuple(got) != tuple(want):
                raise AssertionError(
                    f"hidden case {label}: expected shape {tuple(want)}, got {tuple(got)} "
                    "(a (B, 1) vs (B,) broadcast, or a missing mean?)"
                )
    for key in keys:
        out_key = key.replace("/expected_", "/")
        label = out_key.removeprefix(f"{name}/")
        if out_key.endswith(("/detached", "/target_untouched")):
            got = outputs.get(out_key)
            if got is None or not bool(got):
                what = (
                    "the target must be detached"
                    if "detached" in out_key
                    else (
                        "gradients reached the target network: compute the target under torch.no_grad()"
                    )
                )
                raise AssertionError(f"hidden case {label}: {what}")
            continue
        if f"{out_key}/value" not in outputs:
            raise AssertionError(
                f"hidden case {label}: no output recorded (did the function return a tensor?)"
            )
        got = np.asarray(outputs[f"{out_key}/value"], dtype=np.float64)
        want = np.asarray(expected[key], dtype=np.float64)
        if not np.all(np.isfinite(got)):
            raise AssertionError(f"hidden case {label}: your output contains NaN or inf")
        if not np.allclose(got, want, rtol=rtol, atol=atol):
            worst = float(np.max(np.abs(got - want)))
            raise AssertionError(
                f"hidden case {label}: off by up to {worst:.3g} (tolerance rtol={rtol}, atol={atol})"
            )
    if name == "stitching":
        _check_stitching_order(outputs)


def _check_stitching_order(outputs: dict[str, np.ndarray]) -> None:
    """The chapter's claim on the canonical dataset (case0): CQL > best trajectory > BC."""
    get = {k: float(outputs[f"stitching/case0/{k}/value"]) for k in STITCH_KEYS}
    if not get["cql_return"] > get["best_trajectory_return"] > get["bc_return"]:
        raise AssertionError(
            "on the stitching dataset CQL must beat the best trajectory, which must beat BC; got "
            + ", ".join(f"{k} = {v:g}" for k, v in get.items())
        )
