"""The hidden-check declarations and their fixtures (no grading: these run in seconds).

* every argument of every graded function is given a non-default value by some hidden case;
* a check's fixture bytes depend on that check alone (adding or reordering checks shifts none);
* stored expected values survive the few-ulp differences of another CPU bit for bit;
* failure messages never carry a magnitude: no expected value, no distance, no MC key;
* a declaration without a tolerance, or grading a name the master never defines, fails the build.
"""

from __future__ import annotations

import copy
import io
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import jupytext
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = ROOT / "assignments" / "offline_rl"
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ASSIGNMENT))

import build_release  # noqa: E402
import make_fixtures  # noqa: E402

ZIP = ROOT / "autograder" / "offline_rl" / "autograder.zip"


def _stage(folder: Path, master: Any = None) -> dict[str, Any]:
    """hidden_checks.py + the declarations extracted from the master, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ASSIGNMENT / "hidden_checks.py", folder / "hidden_checks.py")
    spec = build_release.AssignmentSpec.load(ASSIGNMENT)
    nb = jupytext.read(ASSIGNMENT / "master.py") if master is None else master
    return build_release.declare_checks(spec, nb, folder)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("declared")
    _stage(folder)
    return folder


@pytest.fixture(scope="module")
def generated(staged: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, list]]]:
    calls: dict[str, dict[str, list]] = {}
    return make_fixtures.make_fixtures(staged, calls=calls), calls


# ----------------------------------------------------------------------------- argument variation
def _same(value: Any, default: Any) -> bool:
    try:
        return bool(
            np.array_equal(np.asarray(value, dtype=object), np.asarray(default, dtype=object))
        )
    except Exception:
        return value is default


def _is_range(value: Any) -> bool:
    """A sequence of ints equal to range(len): seeds a loop over range(len(seeds)) would match."""
    if not isinstance(value, (list, tuple, range, np.ndarray)):
        return False
    items = list(np.asarray(value).ravel())
    return (
        bool(items)
        and all(isinstance(v, (int, np.integer)) for v in items)
        and ([int(v) for v in items] == list(range(len(items))))
    )


def unvaried(engine: Any, calls: dict[str, dict[str, list]]) -> list[str]:
    """``check: function(argument)`` for each argument no hidden case varies: never passed a
    value other than its default, or (int sequences) never anything but range(len)."""
    import inspect

    problems = []
    for name, decl in engine.REGISTRY.items():
        for graded in decl.graded:
            target = make_fixtures.resolve(decl.reference[graded])
            if not callable(target):
                continue  # a value answer (multiple choice, number): nothing to vary
            recorded = calls.get(name, {}).get(graded, [])
            if not recorded:
                problems.append(f"{name}: {graded} is never called")
                continue
            for param in inspect.signature(target).parameters.values():
                values = [c[param.name] for c in recorded if param.name in c]
                default = param.default
                varied = [
                    v for v in values if default is inspect.Parameter.empty or not _same(v, default)
                ]
                if not varied or all(_is_range(v) for v in varied):
                    problems.append(f"{name}: {graded}({param.name})")
    return problems


def test_every_argument_of_every_graded_function_is_varied(staged, generated):
    engine = make_fixtures.load_engine(staged)
    assert unvaried(engine, generated[1]) == []


def test_argument_variation_test_fails_when_a_case_is_removed(staged):
    """The guard has teeth: drop tabular_q's one case that passes lr, and it names lr."""
    engine = make_fixtures.load_engine(staged)
    decl = engine.REGISTRY["tabular_q"]
    fewer = decl._replace(cases=lambda rng: [c for c in decl.cases(rng) if "lr" not in c])
    calls: dict[str, list] = {}
    make_fixtures.fixtures_of(engine, fewer, calls)
    problems = [p for p in unvaried(engine, {"tabular_q": calls}) if p.startswith("tabular_q")]
    assert problems == ["tabular_q: offline_q_learning(lr)"], "removing the lr case must be caught"
    seeds = {"qualities": [0.0], "seeds": [0, 1]}
    assert _is_range(seeds["seeds"]) and not _is_range([7, 3])


# ------------------------------------------------------------ fixtures that do not shift
def test_each_checks_fixtures_depend_on_that_check_alone(staged, generated):
    """Adding a check (first, so everything after it would shift with one shared generator) or
    reordering the checks leaves every other check's bytes unchanged."""
    everything = generated[0]
    engine = make_fixtures.load_engine(staged)

    @engine.hidden_check(
        "added_example",
        cases=lambda rng: [{"x": rng.normal(size=50)}],
        tolerance=(0.0, 0.0),
        reference={"bc_loss": "offline_rl.algorithms.neural:bc_loss"},
    )
    def _run(case: dict, bc_loss: Any) -> dict:
        return {"y": case["x"]}

    order = ["added_example", *reversed([n for n in engine.REGISTRY if n != "added_example"])]
    again: dict[str, np.ndarray] = {}
    for name in order:
        again.update(make_fixtures.fixtures_of(engine, engine.REGISTRY[name]))
    added = {k for k in again if k.startswith("added_example/")}
    assert added and set(again) - added == set(everything)
    changed = [k for k in everything if _npy(again[k]) != _npy(everything[k])]
    assert changed == [], f"fixtures shifted: {changed[:5]}"


def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


# ------------------------------------------------------------ bit-for-bit on any CPU
def _one_ulp(seed: int) -> Any:
    """A 'different CPU': every float result moved by one ulp, up or down (another summation
    order moves float64 reductions by about that much)."""
    rng = np.random.default_rng(seed)

    def perturb(raw: np.ndarray) -> np.ndarray:
        if not np.issubdtype(raw.dtype, np.floating):
            return raw
        direction = np.where(rng.random(raw.shape) < 0.5, -np.inf, np.inf)
        return np.nextafter(raw, direction)

    return perturb


def _expected_bytes(fx: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    make_fixtures.write_npz(buffer, make_fixtures.split(fx)[1])  # type: ignore[arg-type]
    return buffer.getvalue()


def test_one_ulp_leaves_every_stored_expected_value_unchanged(generated):
    expected = make_fixtures.split(generated[0])[1]
    floats = {k: v for k, v in expected.items() if np.issubdtype(v.dtype, np.floating)}
    assert floats
    for key, stored in floats.items():
        for direction in (-np.inf, np.inf):
            moved = make_fixtures.canonical(np.nextafter(stored, direction))
            assert _npy(moved) == _npy(stored), f"{key}: 1 ulp changes the stored bytes"


def test_simulated_other_cpu_reproduces_the_release(staged, generated, monkeypatch):
    """Fixtures recomputed with every raw float moved by one ulp give the same bytes as here and
    as the committed release; without canonicalisation (the old behaviour) they would not."""
    other_cpu = make_fixtures.make_fixtures(staged, perturb=_one_ulp(1))
    assert _expected_bytes(other_cpu) == _expected_bytes(generated[0])
    with zipfile.ZipFile(ZIP) as zf:
        committed = zf.read("files/hidden_expected.npz")
    assert _expected_bytes(other_cpu) == committed, (
        "the committed release differs from the fixtures recomputed on a simulated other CPU "
        "(run `make release`)"
    )
    monkeypatch.setattr(make_fixtures, "canonical", lambda values, bits=53: np.asarray(values))
    old_here = make_fixtures.make_fixtures(staged, only={"tabular_q"})
    old_other = make_fixtures.make_fixtures(staged, perturb=_one_ulp(1), only={"tabular_q"})
    assert _expected_bytes(old_here) != _expected_bytes(old_other), "the simulation changes nothing"


# ----------------------------------------------------------------------------- messages
FLOAT = re.compile(r"(?<![\w.])[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)(?![\w.])")


def _wrong_outputs(engine: Any, name: str, fx: dict[str, np.ndarray], how: str) -> dict:
    """Outputs of check ``name`` that are wrong in a given way, built from the expected ones."""
    out: dict[str, np.ndarray] = {}
    for key, want in make_fixtures.split(fx)[1].items():
        if not key.startswith(f"{name}/"):
            continue
        path = key.replace("/expected_", "/")
        value = np.asarray(want, dtype=np.float64)
        if how == "shifted":
            value = value + 0.6180339 * (1 + np.abs(value))
        elif how == "zero":
            value = np.zeros_like(value)
        elif how == "one_entry":
            value = value.copy()
            value.flat[-1] += 1.234567
        elif how == "inf":
            value = value.copy()
            value.flat[0] = np.inf
        out[f"{path}/value"] = value
        out[f"{path}/shape"] = np.array(value.shape, dtype=np.int64)
    return out


@pytest.mark.parametrize("how", ["shifted", "zero", "one_entry", "inf"])
def test_failure_messages_carry_no_magnitude(staged, generated, how):
    engine = make_fixtures.load_engine(staged)
    fx = generated[0]
    expected = make_fixtures.split(fx)[1]
    failed = 0
    for name, decl in engine.REGISTRY.items():
        try:
            engine.compare(name, _wrong_outputs(engine, name, fx, how), fixtures=expected)
        except AssertionError as err:
            message = str(err)
            failed += 1
        else:
            continue
        floats = [m.group(0) for m in FLOAT.finditer(message)]
        assert not floats, f"{name} ({how}): the message shows numbers {floats}: {message}"
        if decl.kind == "choice":
            assert message == "your answer is not the right choice", message
    assert failed >= len(engine.REGISTRY) // 2


def test_a_later_question_blames_the_earlier_function_it_calls(staged, generated):
    engine = make_fixtures.load_engine(staged)
    expected = make_fixtures.split(generated[0])[1]
    outputs = _wrong_outputs(engine, "alpha", generated[0], "shifted")
    outputs.update(_wrong_outputs(engine, "coverage", generated[0], "zero"))
    tabular = {k: v for k, v in expected.items() if k.startswith("tabular_q/")}
    outputs.update({k.replace("/expected_", "/") + "/value": v for k, v in tabular.items()})
    blame = r"uses your `coverage_counts` / `ood_fraction` from q1_coverage.*fix q1_coverage first"
    with pytest.raises(AssertionError, match=blame):
        engine.compare("alpha", outputs, fixtures=expected)


def test_the_grader_blames_with_the_used_checks_own_harvests(tmp_path):
    """The grader harvests a check without re-running the checks it uses (they ran in their own
    harvests); it adds their outputs before comparing, so the blame still names them."""
    from grading import runner

    with zipfile.ZipFile(ZIP) as zf:
        zf.extractall(tmp_path)
    grader = runner.Grader(tmp_path)
    assert grader.blame_from["alpha"] == ("coverage", "tabular_q")
    expected = grader.checks._load(grader.checks.EXPECTED)
    outputs: dict[str, Any] = {
        name: _wrong_outputs(grader.checks, name, expected, how)
        for name, how in (("alpha", "shifted"), ("coverage", "zero"), ("tabular_q", "right"))
    }
    ok, why = grader._score_check("alpha", outputs["alpha"], outputs)
    assert not ok
    assert re.search(r"uses your `coverage_counts` / `ood_fraction` from q1_coverage.*fix q1", why)
    outputs["coverage"] = _wrong_outputs(grader.checks, "coverage", expected, "right")
    ok, why = grader._score_check("alpha", outputs["alpha"], outputs)
    assert not ok and "fix q1" not in why and why.startswith("hidden case"), why
    # A used check whose harvest left no arrays (timed out, crashed) failed: it is blamed.
    outputs["coverage"] = "your code was stopped after 30 s on the hidden inputs"
    ok, why = grader._score_check("alpha", outputs["alpha"], outputs)
    assert not ok and "fix q1_coverage first" in why, why


CASE = "@test_case({kw})\ndef test_{i}(x):\n    assert x\n"
#: Test files in otter's format, beside the release's: points split, given per case, as a list,
#: absent, and files only otter's own parser reads (the grader then hands them to otter).
SYNTHETIC_TEST_FILES = [
    ("points = 4", ["points=None, hidden=False", "hidden=True, failure_message='m'"] * 3),
    ("points = 3", ["points=1", "points=None, hidden=True", "points=None"]),
    ("points = [1, 2.5]", ["hidden=True", "hidden=False"]),
    ("", ["hidden=True", "points=0"]),
    ("", ["points=2, hidden=True", "points=None"]),
    ("points = 1 + 1", ["hidden=True"]),
    ("name = name + '_x'", ["hidden=True"]),
    ("from otter.test_files import test_case as tc", ["hidden=True"]),
]


def _graded(test_file: tuple[str, float, list[Any]]) -> tuple[str, list[tuple[str, bool, Any]]]:
    """What the grader takes from a test file besides its points: name, and per case the
    function's name, whether it is hidden, its failure message."""
    name, _, cases = test_file
    return name, [(c.function, c.hidden, c.failure_message) for c in cases]


@pytest.mark.parametrize("header, cases", SYNTHETIC_TEST_FILES)
def test_the_graders_test_file_reader_agrees_with_otter(tmp_path, header, cases):
    """The grader reads otter's test files without importing otter (~0.6 CPU-s per grading);
    where it can't, otter does. Either way it gets what otter's own parser gets."""
    from grading import runner

    body = "".join(CASE.format(kw=kw, i=i) for i, kw in enumerate(cases))
    path = tmp_path / "q.py"
    path.write_text(f"from otter.test_files import test_case\n\nname = 'q'\n{header}\n\n{body}")
    got = runner._otter_test_file(path)
    try:
        parsed = runner._parse_test_file(path.read_text())
    except ValueError:
        assert header.startswith(("points = 1 +", "name = name", "from")), "a plain file refused"
        return
    assert _graded(parsed) == _graded(got)
    assert parsed[1] == pytest.approx(got[1], abs=1e-12)


def test_the_graders_test_file_reader_agrees_with_otter_on_the_release(tmp_path):
    from grading import runner

    with zipfile.ZipFile(ZIP) as zf:
        names = [n for n in zf.namelist() if n.startswith("tests/") and n.endswith(".py")]
        zf.extractall(tmp_path, members=names)
    assert len(names) >= 12
    for name in names:
        path = tmp_path / name
        parsed, got = runner._parse_test_file(path.read_text()), runner._otter_test_file(path)
        assert _graded(parsed) == _graded(got) and parsed[1] == got[1], name


# ----------------------------------------------------------------------------- build errors
def _master_with(edit: Any) -> Any:
    nb = copy.deepcopy(jupytext.read(ASSIGNMENT / "master.py"))
    cell = next(
        c for c in nb.cells if '"bcq",' in c.source and "hidden_check" in c.metadata.get("tags", [])
    )
    cell.source = edit(cell.source)
    return nb


def test_a_check_without_tolerance_fails_the_build_naming_it(tmp_path):
    nb = _master_with(lambda s: s.replace("    tolerance=(0.0, 0.0),\n", "", 1))
    with pytest.raises(build_release.BuildError, match="'bcq' declares no tolerance"):
        _stage(tmp_path, nb)


def test_a_check_grading_an_undefined_name_fails_the_build_naming_it(tmp_path):
    nb = _master_with(
        lambda s: (
            s.replace("case, bcq_policy)", "case, bcq_polcy)")
            .replace('"bcq_policy": "', '"bcq_polcy": "')
            .replace("bcq_policy(case", "bcq_polcy(case")
        )
    )
    with pytest.raises(build_release.BuildError, match="'bcq' grades 'bcq_polcy'"):
        _stage(tmp_path, nb)


def test_a_wrong_forward_value_is_reported_before_its_gradient(staged, generated):
    """A penalty computed wrong (its gradient then wrong too) is reported as the penalty: fields
    come in the order the check's run returns them, not alphabetically (grad < penalty)."""
    import torch

    engine = make_fixtures.load_engine(staged)
    inputs, expected = make_fixtures.split(generated[0])

    def doubled_penalty(q_values, actions):  # forward value and gradient both off by 2x
        lse = torch.logsumexp(q_values, dim=1)
        return 2 * (lse - q_values.gather(1, actions.unsqueeze(1)).squeeze(1)).mean()

    got = engine.outputs("cql_penalty", doubled_penalty, fixtures=inputs)
    with pytest.raises(AssertionError) as err:
        engine.compare("cql_penalty", got, fixtures=expected)
    assert re.match(r"hidden case case\d+, penalty:", str(err.value)), str(err.value)


def test_a_check_without_hint_shows_no_placeholder_hint(tmp_path):
    """A declaration without a hint gets no failure_message, so no "Hint:" line (the grader
    prints one only for a non-empty failure_message), never a placeholder."""
    nb = jupytext.read(ASSIGNMENT / "master.py")
    registry = _stage(tmp_path, nb)
    hintless = [d.name for d in registry.values() if not d.hint]
    assert hintless, "the master declares no check without a hint: nothing to test"
    for name in hintless:
        cell = next(c for c in nb.cells if f"def test_{name}_hidden(" in c.source)
        assert "failure_message" not in cell.source, cell.source
    assert not any("see the message above" in c.source for c in nb.cells)
