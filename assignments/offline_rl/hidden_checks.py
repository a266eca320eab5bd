"""Hidden checks for the offline_rl assignment (an autograder-only file: never shipped to students).

This file is the engine; the checks themselves are *declared* in the master notebook, one
``@hidden_check(...)`` cell per check (cells tagged ``hidden_check``). The release build extracts
those cells into ``hidden_declarations.py`` and replaces each by the otter test
``test_<name>_hidden``; ``make_fixtures.py`` turns every declaration into inputs and expected
values. A declaration is::

    def _bc_loss_cases(rng):                     # inputs, from the check's own seeded generator
        return [{"logits": ..., "actions": ...}, ...]

    @hidden_check("bc_loss", cases=_bc_loss_cases, tolerance=(1e-4, 1e-5),
                  reference={"bc_loss": "offline_rl.algorithms.neural:bc_loss"},
                  hint="...")
    def _bc_loss_run(case, bc_loss):             # graded functions = the parameters after case
        return {"loss": bc_loss(torch.tensor(case["logits"]), torch.tensor(case["actions"]))}

The same ``run`` produces the expected values (called with the reference functions, on inputs
upcast to float64, at build time) and the student's outputs (called with the notebook's
functions, in the sandboxed kernel). Each check is graded in two separate steps, so the
comparison runs outside the student's kernel:

1. ``CHECKS[name](*notebook_values) -> dict[str, np.ndarray]`` runs the student's code on
   ``hidden_inputs.npz`` and records plain arrays. It never sees expected values.
2. ``compare(name, outputs)`` compares them with ``hidden_expected.npz`` (which the kernel cannot
   read) and raises ``AssertionError`` with a message that says where the answer differs, never
   by how much, so it teaches without leaking the key.

``check(name, ...)`` runs both in one process (otter's own self-check).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

INPUTS = Path(__file__).with_name("hidden_inputs.npz")
EXPECTED = Path(__file__).with_name("hidden_expected.npz")
DECLARATIONS = Path(__file__).with_name("hidden_declarations.py")
#: Relative slack every comparison allows: expected values are stored rounded to 28 significant
#: bits (make_fixtures.canonical), so "exact" means equal up to that rounding (~4e-9).
STORED_RTOL = 2.0**-26
#: Absolute slack likewise: stored values below 2**-30 in magnitude are stored as 0.
STORED_ATOL = 2.0**-29
#: Kinds of answer, which decide what a failure message may say.
KINDS = ("array", "choice", "number")


class DeclarationError(ValueError):
    """A hidden-check declaration is incomplete or inconsistent (the build stops, naming it)."""


class Declaration(NamedTuple):
    """One hidden check, as declared in the master. (A NamedTuple, not a dataclass: the grader
    loads this file without registering it in sys.modules, which dataclasses need.)"""

    name: str
    cases: Callable[[np.random.Generator], list[dict[str, Any]]]
    run: Callable[..., dict[str, Any]]
    tolerance: tuple[float, float]
    """(rtol, atol) of every float output: wide enough for float32 and other correct orders of
    operations, narrow enough for the mistakes of the corpus."""
    reference: dict[str, str]
    """Graded name -> where the build finds the expected behaviour: ``"module:function"`` or
    ``"master:NAME"`` (the value of ``NAME = ...  # SOLUTION`` in the master)."""
    hint: str
    """Shown under a failed check (otter's failure_message)."""
    kind: str = "array"
    uses: tuple[str, ...] = ()
    """Earlier checks whose graded functions this one calls: a failure is blamed on them first."""
    flags: dict[str, str] = {}  # noqa: RUF012 (never mutated)
    """Boolean outputs that must be True -> the message when one is False."""
    units: dict[str, str] = {}  # noqa: RUF012 (never mutated)
    """Output -> what its first axis indexes ("states"), for messages."""
    question: str = ""
    """The otter question holding the declaration (filled in by the build)."""

    @property
    def graded(self) -> tuple[str, ...]:
        """The notebook names this check grades: ``run``'s parameters after ``case``."""
        return tuple(inspect.signature(self.run).parameters)[1:]


#: Every declaration, in the master's order.
REGISTRY: dict[str, Declaration] = {}


def hidden_check(
    name: str,
    *,
    cases: Callable[[np.random.Generator], list[dict[str, Any]]],
    tolerance: tuple[float, float] | None = None,
    reference: dict[str, str] | None = None,
    hint: str = "",
    kind: str = "array",
    uses: tuple[str, ...] = (),
    flags: dict[str, str] | None = None,
    units: dict[str, str] | None = None,
    question: str = "",
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Declare a hidden check (decorates its ``run(case, *graded)``); see the module docstring."""

    def register(run: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if tolerance is None:
            raise DeclarationError(
                f"hidden check {name!r} declares no tolerance: give tolerance=(rtol, atol) "
                "(use (0.0, 0.0) for exact answers)"
            )
        if kind not in KINDS:
            raise DeclarationError(f"hidden check {name!r}: kind must be one of {KINDS}")
        if name in REGISTRY:
            raise DeclarationError(f"hidden check {name!r} is declared twice")
        decl = Declaration(
            name=name,
            cases=cases,
            run=run,
            tolerance=(float(tolerance[0]), float(tolerance[1])),
            reference=dict(reference or {}),
            hint=" ".join(hint.split()),
            kind=kind,
            uses=tuple(uses),
            flags=dict(flags or {}),
            units=dict(units or {}),
            question=question,
        )
        if not decl.graded:
            raise DeclarationError(f"hidden check {name!r}: run(case, ...) grades no function")
        missing = set(decl.graded) - set(decl.reference)
        if missing:
            raise DeclarationError(
                f"hidden check {name!r}: no reference for {sorted(missing)} "
                '(reference={"name": "module:function"})'
            )
        unknown = [u for u in decl.uses if u not in REGISTRY]
        if unknown:
            raise DeclarationError(f"hidden check {name!r} uses undeclared checks {unknown}")
        REGISTRY[name] = decl
        return run

    return register


def load_declarations(path: Path = DECLARATIONS) -> dict[str, Declaration]:
    """Execute the declarations file into :data:`REGISTRY` (once) and return it."""
    if not REGISTRY and path.exists():
        namespace = {
            "hidden_check": hidden_check,
            # The build writes `hidden_check = _hidden_check_in("<question>")` before each cell.
            "_hidden_check_in": lambda q: functools.partial(hidden_check, question=q),
            "__name__": "hidden_declarations",
            **HELPERS,
        }
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    return REGISTRY


# ----------------------------------------------------------------------------- step 1: outputs
#: Fixture files opened in this process, by (path, mtime, size): each check of a grading reads
#: its own arrays from the one opened file, instead of parsing its ~300-entry zip directory
#: again (~4 ms a time, 14 checks per grading in the kernel). A rewritten file is opened afresh.
_OPENED: dict[tuple[str, int, int], Any] = {}


def _load(path: Path = INPUTS, checks: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (all, or only those of ``checks``: keys ``check/...``).

    Members are inflated only when read, so one check reads its own few dozen arrays, not the
    file's ~300 (which cost ~30 ms per check, 14 times per grading, at Gradescope's 0.5 CPU)."""
    info = os.stat(path)
    key = (os.fspath(path), info.st_mtime_ns, info.st_size)
    if key not in _OPENED:
        _OPENED[key] = np.load(path, allow_pickle=False)
    data = _OPENED[key]
    keys = data.files if checks is None else [
        k for k in data.files if k.partition("/")[0] in checks
    ]  # fmt: skip
    return {k: data[k] for k in keys}


def case_inputs(fixtures: dict[str, np.ndarray], name: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(case label, {field: array})]`` of check ``name`` from a fixture dict."""
    cases: dict[str, dict[str, Any]] = {}
    for key, value in fixtures.items():
        check, _, rest = key.partition("/")
        if check != name:
            continue
        case, _, fld = rest.partition("/")
        cases.setdefault(case, {})[fld] = value
    return sorted(cases.items(), key=lambda kv: int(kv[0].removeprefix("case")))


def as_array(value: Any) -> np.ndarray:
    """A returned value (tensor, array, float, bool) as a numpy array of float64."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err)[:300]}"


def run_cases(
    decl: Declaration, cases: list[tuple[str, dict[str, Any]]], fns: tuple[Any, ...]
) -> dict[str, np.ndarray]:
    """``decl.run`` on every case; ``{name/case/field/value|shape, name/case/error}``."""
    out: dict[str, np.ndarray] = {}
    for label, case in cases:
        p = f"{decl.name}/{label}"
        try:
            result = decl.run(dict(case), *fns)
            if not isinstance(result, dict):
                raise TypeError("the check's run must return a dict")
            for fld, value in result.items():
                if value is None:
                    out[f"{p}/{fld}/error"] = np.array(
                        f"{fld}: your function returned None (is it implemented?)"
                    )
                    continue
                arr = as_array(value)
                out[f"{p}/{fld}/value"] = arr
                out[f"{p}/{fld}/shape"] = np.array(arr.shape, dtype=np.int64)
        except Exception as err:  # the student's code raised: recorded, judged in step 2
            out[f"{p}/error"] = np.array(_describe_error(err))
    return out


def outputs(
    name: str, *fns: Any, fixtures: dict[str, np.ndarray] | None = None, uses: bool = True
) -> dict:
    """Step 1 of check ``name`` and, with ``uses``, of the checks it uses (for blame).

    The grader passes ``uses=False`` when every check ``name`` uses is graded on its own: it
    then blames with those checks' own outputs instead of running them again here."""
    registry = load_declarations()
    decl = registry[name]
    used_checks = decl.uses if uses else ()
    fx = _load(checks={name, *used_checks}) if fixtures is None else fixtures
    values = dict(zip(parameters(decl), fns))
    out = run_cases(decl, case_inputs(fx, name), tuple(values[g] for g in decl.graded))
    for used in used_checks:
        dep = registry[used]
        out.update(run_cases(dep, case_inputs(fx, used), tuple(values[g] for g in dep.graded)))
    return out


def parameters(decl: Declaration) -> list[str]:
    """The notebook names step 1 of ``decl`` needs: its own, then those of the checks it uses."""
    names = list(decl.graded)
    for used in decl.uses:
        names += [g for g in REGISTRY[used].graded if g not in names]
    return names


def _step_one(decl: Declaration) -> Callable[..., dict[str, np.ndarray]]:
    def step(*fns: Any, uses: bool = True) -> dict[str, np.ndarray]:
        return outputs(decl.name, *fns, uses=uses)

    # The grader passes notebook globals by these parameter names (grading/kernel_side.py);
    # ``uses`` is the grader's keyword, not a notebook name, so it stays out of the signature.
    params = [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in parameters(decl)
    ]
    step.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    step.__name__ = f"outputs_{decl.name}"
    return step


def check(name: str, *notebook_values: Any) -> None:
    """Both steps in this process (for otter's in-kernel self-check and the instructor)."""
    compare(name, CHECKS[name](*notebook_values))


# ----------------------------------------------------------------------------- step 2: compare
def _where(mask: np.ndarray, limit: int = 6, unit: str = "") -> str:
    """Positions where ``mask`` is True: "entries (0, 2), (3, 1) (2 of 12)". Never values."""
    idx = np.argwhere(mask)
    total, count = mask.size, len(idx)
    if mask.ndim == 0:
        return ""
    shown = ", ".join(
        str(int(i[0])) if mask.ndim == 1 else "(" + ", ".join(str(int(j)) for j in i) + ")"
        for i in idx[:limit]
    )
    more = ", ..." if count > limit else ""
    noun = unit or ("entry" if count == 1 else "entries")
    return f"{noun} {shown}{more} ({count} of {total})"


def _mismatch(decl: Declaration, label: str, fld: str, got: np.ndarray, want: np.ndarray) -> str:
    """The failure message for a value outside the tolerance: where, never by how much."""
    where = f"hidden case {label}, {fld}"
    if decl.kind == "choice":
        return "your answer is not the right choice"
    if decl.kind == "number" or want.size == 1:
        return f"{where}: outside the tolerance"
    rtol, atol = max(decl.tolerance[0], STORED_RTOL), max(decl.tolerance[1], STORED_ATOL)
    off = ~np.isclose(got, want, rtol=rtol, atol=atol)
    return f"{where}: differs from the reference in {_where(off, unit=decl.units.get(fld, ''))}"


def _compare_one(
    decl: Declaration, got: dict[str, np.ndarray], fixtures: dict[str, np.ndarray]
) -> None:
    prefix = f"{decl.name}/"
    expected = {
        k: v
        for k, v in fixtures.items()
        if k.startswith(prefix) and k.rsplit("/", 1)[-1].startswith("expected_")
    }
    if not expected:
        raise AssertionError(f"no fixtures for {decl.name!r}: rebuild the release")
    items = []
    for key in expected:
        case_path, _, leaf = key.rpartition("/")
        fld = leaf.removeprefix("expected_")
        label = case_path.removeprefix(prefix)
        items.append((label, fld, f"{case_path}/{fld}", np.asarray(expected[key])))
    # The order the check's run returns its fields in (step 1 records them so; fixtures are
    # stored sorted): forward values before gradients, so that a wrong loss is reported as the
    # loss, not through its gradient. Field by field, case by case within a field.
    rank = _field_order(got, decl.name)
    items.sort(key=lambda it: (rank.get(it[1], len(rank)), it[1], _case_number(it[0])))
    # Errors and shapes first, for every case: "wrong shape" teaches more than a value that is off.
    for label, fld, out_key, want in items:
        case_path = out_key.rsplit("/", 1)[0]
        if f"{case_path}/error" in got:
            raise AssertionError(
                f"hidden case {label}: your code raised {got[f'{case_path}/error']}"
            )
        if f"{out_key}/error" in got:  # e.g. "counts: your function returned None (...)"
            raise AssertionError(f"hidden case {label}: {got[f'{out_key}/error']}")
        if f"{out_key}/value" not in got:
            raise AssertionError(f"hidden case {label}: no {fld} recorded")
        shape = tuple(np.shape(got[f"{out_key}/value"]))
        if decl.kind == "array" and shape != want.shape:
            raise AssertionError(
                f"hidden case {label}, {fld}: expected shape {want.shape}, got {shape} "
                "(a (B, 1) vs (B,) broadcast, or a missing mean?)"
            )
    rtol, atol = max(decl.tolerance[0], STORED_RTOL), max(decl.tolerance[1], STORED_ATOL)
    for label, fld, out_key, want in items:
        value = np.asarray(got[f"{out_key}/value"], dtype=np.float64)
        if fld in decl.flags:
            if not bool(np.all(value)):
                raise AssertionError(f"hidden case {label}: {decl.flags[fld]}")
            continue
        if decl.kind != "array" and value.shape != want.shape:
            raise AssertionError(_mismatch(decl, label, fld, value, want))
        if decl.kind == "choice" and not np.array_equal(value, want):
            raise AssertionError(_mismatch(decl, label, fld, value, want))
        if not np.all(np.isfinite(value)):
            where = _where(~np.isfinite(value)) if value.ndim else ""
            raise AssertionError(
                f"hidden case {label}, {fld}: your output contains NaN or inf {where}".rstrip()
            )
        if not np.allclose(value, want.astype(np.float64), rtol=rtol, atol=atol):
            raise AssertionError(_mismatch(decl, label, fld, value, want.astype(np.float64)))


def _case_number(label: str) -> int:
    return int(label.removeprefix("case")) if label.removeprefix("case").isdigit() else 0


def _field_order(got: dict[str, np.ndarray], name: str) -> dict[str, int]:
    """Field -> its position among the fields check ``name``'s run returned (first case seen)."""
    rank: dict[str, int] = {}
    for key in got:
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == name and parts[3] == "value":
            rank.setdefault(parts[2], len(rank))
    return rank


def compare(
    name: str, outputs: dict[str, np.ndarray], fixtures: dict[str, np.ndarray] | None = None
) -> None:
    """Compare a check's outputs with the expected values; raise AssertionError on the first miss.

    When the check fails and a check it ``uses`` fails too, the message blames that one: the
    later question called the student's earlier function, so that is what to fix first.
    """
    registry = load_declarations()
    decl = registry[name]
    fx = _load(EXPECTED, checks={name, *decl.uses}) if fixtures is None else fixtures
    try:
        _compare_one(decl, outputs, fx)
    except AssertionError as own:
        for used in decl.uses:
            dep = registry[used]
            try:
                _compare_one(dep, outputs, fx)
            except AssertionError:
                fns = " / ".join(f"`{g}`" for g in dep.graded)
                where = dep.question or dep.name
                here = decl.question or decl.name
                verb = "fails" if len(dep.graded) == 1 else "fail"  # `f` fails, `f` / `g` fail
                raise AssertionError(
                    f"{here} uses your {fns} from {where}, which {verb} hidden check {dep.name}: "
                    f"fix {where} first ({own})"
                ) from None
        raise


# ----------------------------------------------------------------------------- declaration helpers
def dataset_fields(prefix: str, dataset: Any) -> dict[str, np.ndarray]:
    """An OfflineDataset as case fields ``prefix/<field>`` (for a ``cases`` builder)."""
    return {f"{prefix}/{f}": np.asarray(v) for f, v in dataset.as_dict().items()}


def dataset_from(case: dict[str, Any], prefix: str) -> Any:
    """The OfflineDataset stored by :func:`dataset_fields` (for a ``run``)."""
    from offline_rl.datasets import OfflineDataset

    fields = {
        k.removeprefix(f"{prefix}/"): v for k, v in case.items() if k.startswith(f"{prefix}/")
    }
    return OfflineDataset(**{f: np.array(v) for f, v in fields.items()})


def mlp_fields(prefix: str, net: Any) -> dict[str, np.ndarray]:
    """The parameters of a Linear-ReLU-Linear network as case fields ``prefix/p<i>``."""
    return {f"{prefix}/p{i}": p.detach().numpy().copy() for i, p in enumerate(net.parameters())}


def mlp_from(case: dict[str, Any], prefix: str) -> Any:
    """The network stored by :func:`mlp_fields`, in the dtype of the stored weights."""
    import torch
    from torch import nn

    w0, b0, w1, b1 = (np.asarray(case[f"{prefix}/p{i}"]) for i in range(4))
    net = nn.Sequential(
        nn.Linear(w0.shape[1], w0.shape[0]), nn.ReLU(), nn.Linear(w1.shape[1], w1.shape[0])
    ).to(torch.float64 if w0.dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for param, value in zip(net.parameters(), (w0, b0, w1, b1)):
            param.copy_(torch.tensor(value))
    return net


HELPERS = {
    "dataset_fields": dataset_fields,
    "dataset_from": dataset_from,
    "mlp_fields": mlp_fields,
    "mlp_from": mlp_from,
}


load_declarations()
#: check name -> step 1. Its parameter names are the notebook globals the check is given.
CHECKS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    n: _step_one(d) for n, d in REGISTRY.items()
}
#: check name -> (rtol, atol), from the declarations.
TOLERANCES: dict[str, tuple[float, float]] = {n: d.tolerance for n, d in REGISTRY.items()}
