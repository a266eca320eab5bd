"""Generate the hidden-test fixtures from the declarations: seeded inputs, reference outputs.

Run by the release build as ``python make_fixtures.py OUTDIR``, where OUTDIR already holds
``hidden_checks.py`` and the ``hidden_declarations.py`` the build extracted from the master.
For each declared check (see hidden_checks.py):

* its inputs come from ``cases(rng)`` with a generator (numpy and torch) seeded from the check's
  *name*, so adding, removing or reordering checks changes no other check's bytes;
* its expected values are ``run(case, *reference functions)`` on the inputs upcast to float64,
  so they do not inherit float32 rounding; nothing here is typed by hand;
* expected floats are canonicalised: rounded to ``MANTISSA_BITS`` = 28 significant bits
  (relative 2**-28 ~ 3.7e-9, over 10,000 times finer than any float tolerance), and below
  ``FLUSH`` to 0. A different CPU's summation order
  moves a float64 result by a few ulps (2**-52): that flips a stored value only if it lies within
  those ulps of a rounding boundary, a chance of ~2**-24 per value, so the release reproduces
  bit-for-bit on any machine (tests/test_hidden_checks.py simulates one).

Keys are ``<check>/<case>/<field>``; expected ones end in ``expected_<field>``. They go to two
files with two readers: ``hidden_inputs.npz`` is copied into the student's sandboxed kernel,
``hidden_expected.npz`` stays with the trusted grading process.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import io
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

MASTER = Path(__file__).with_name("master.py")
#: Significant bits kept in stored expected floats (float64 has 53).
MANTISSA_BITS = 28
#: Stored expected floats smaller than this in magnitude are stored as 0 (hidden_checks allows
#: the same absolute slack), so a zero does not turn into a denormal on another CPU.
FLUSH = 2.0**-30
OFFSET = 2 - (1 + 5**0.5) / 2


def check_seed(name: str) -> int:
    """The seed of check ``name``'s own generators (stable across Python runs and machines)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def canonical(values: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """``values`` rounded to ``bits`` significant bits (ints, bools and strings unchanged)."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    mantissa, exponent = np.frexp(arr.astype(np.float64))
    # floor(x + c), not round(x), with c = 2 - golden ratio: the rounding boundaries then sit at
    # fraction 0.618..., far from every fraction with a small denominator (1/2, 2/3, 3/5, ...),
    # where values with a short or periodic binary expansion (float32 inputs, means over a few
    # items) lie. Only a value 1-2 ulps from a boundary by pure chance (~2**-24 each) could flip.
    rounded = np.ldexp(np.floor(mantissa * 2.0**bits + OFFSET) / 2.0**bits, exponent)
    # A result that is 0 here may come out as +-1e-17 elsewhere: flush what is below FLUSH.
    return np.where(np.abs(rounded) < FLUSH, 0.0, rounded) + 0.0  # + 0.0 turns -0.0 into 0.0


def load_engine(folder: Path) -> ModuleType:
    """``folder/hidden_checks.py`` (which loads ``folder/hidden_declarations.py``), fresh."""
    path = Path(folder) / "hidden_checks.py"
    spec = importlib.util.spec_from_file_location(f"_hidden_checks_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution_value(name: str, master: Path = MASTER) -> Any:
    """The value of ``name = ...  # SOLUTION`` in the master: the answer key's single source."""
    match = re.search(rf"^{name} = (.+?)\s+# SOLUTION$", master.read_text(), re.M)
    if not match:
        raise SystemExit(f"make_fixtures: no `{name} = ...  # SOLUTION` line in {master.name}")
    try:
        return ast.literal_eval(match.group(1))
    except ValueError:  # an expression such as float(np.log(4))
        return eval(match.group(1), {"np": np})  # the instructor's own master


def resolve(target: str, master: Path = MASTER) -> Any:
    """``"module:attr"`` -> that object; ``"master:NAME"`` -> the master's solution value."""
    module, _, attr = target.partition(":")
    if module == "master":
        return solution_value(attr, master)
    return getattr(importlib.import_module(module), attr)


class Recorder:
    """A reference function that records the arguments of every call (bound to its signature)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, []
        self.signature = inspect.signature(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(self.signature.bind(*args, **kwargs).arguments)
        return self.fn(*args, **kwargs)


def upcast(case: dict[str, Any]) -> dict[str, Any]:
    """The case with float32 arrays as float64 (the reference computes in double precision)."""
    return {
        k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
        for k, v in case.items()
    }


def fixtures_of(
    engine: ModuleType,
    decl: Any,
    calls: dict[str, list[dict[str, Any]]] | None = None,
    perturb: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Inputs and canonical expected values of one declared check.

    ``calls`` (if given) collects the arguments each reference function was called with;
    ``perturb`` (tests only) alters raw expected values before canonicalisation.
    """
    import torch

    seed = check_seed(decl.name)
    torch.manual_seed(seed)
    cases = decl.cases(np.random.default_rng(seed))
    if not cases:
        raise SystemExit(f"make_fixtures: hidden check {decl.name!r} declares no case")
    fns = []
    for graded in decl.graded:
        ref = resolve(decl.reference[graded])
        fns.append(Recorder(ref) if callable(ref) else ref)
    fx: dict[str, np.ndarray] = {}
    torch.set_num_threads(1)
    for i, case in enumerate(cases):
        p = f"{decl.name}/case{i}"
        fx[f"{p}/_case"] = np.array(i)  # every case has an input, even one with no fields
        for fld, value in case.items():
            fx[f"{p}/{fld}"] = np.asarray(value)
        with torch.random.fork_rng():
            torch.manual_seed(seed + i)
            result = decl.run(upcast({k: np.asarray(v) for k, v in case.items()}), *fns)
        for fld, value in result.items():
            raw = engine.as_array(value)
            fx[f"{p}/expected_{fld}"] = canonical(perturb(raw) if perturb else raw)
    if calls is not None:
        for graded, fn in zip(decl.graded, fns):
            if isinstance(fn, Recorder):
                calls[graded] = [*calls.get(graded, []), *fn.calls]
    return fx


def make_fixtures(
    folder: Path,
    calls: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
    perturb: Callable[[np.ndarray], np.ndarray] | None = None,
    only: set[str] | None = None,
) -> dict[str, np.ndarray]:
    """All fixtures of the checks declared in ``folder`` (or of the ``only`` ones)."""
    engine = load_engine(folder)
    fx: dict[str, np.ndarray] = {}
    for name, decl in engine.REGISTRY.items():
        if only is not None and name not in only:
            continue
        per_check = None if calls is None else calls.setdefault(name, {})
        fx.update(fixtures_of(engine, decl, per_check, perturb))
    return fx


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed entry timestamps and order, so equal arrays give equal bytes
    (``np.savez`` stamps each entry with the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(2000, 1, 1, 0, 0, 0))
            zf.writestr(info, buffer.getvalue())


def split(fx: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected): a key is expected when its last part starts with ``expected_``."""
    is_expected = {k: k.rsplit("/", 1)[-1].startswith("expected_") for k in fx}
    inputs = {k: v for k, v in fx.items() if not is_expected[k]}
    expected = {k: v for k, v in fx.items() if is_expected[k]}
    return inputs, expected


def main(outdir: str) -> None:
    inputs, expected = split(make_fixtures(Path(outdir)))
    for name, arrays in (("hidden_inputs.npz", inputs), ("hidden_expected.npz", expected)):
        write_npz(Path(outdir) / name, arrays)
        print(f"wrote {len(arrays)} arrays to {Path(outdir) / name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
