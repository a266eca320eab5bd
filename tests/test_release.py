"""The committed release is current, reproducible, and leaks neither solutions nor hidden tests."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pytest

from tests.conftest import open_sandbox_paths

ROOT = Path(__file__).resolve().parents[1]
NAME = "offline_rl"
ASSIGNMENT = ROOT / "assignments" / NAME
STUDENT = ROOT / "student_release" / NAME
GRADER = ROOT / "autograder" / NAME
SHIPPED = tomllib.loads((ASSIGNMENT / "release.toml").read_text())["support"]["modules"]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def fresh_build(fresh_release: Path) -> Path:
    """The release rebuilt from the masters and reference/ (conftest's, shared by the run)."""
    return fresh_release


def test_committed_release_is_up_to_date(fresh_build):
    for folder in ("student_release", "autograder"):
        built, committed = _tree(fresh_build / folder / NAME), _tree(ROOT / folder / NAME)
        assert sorted(built) == sorted(committed), (
            f"{folder}: file lists differ; run `make release`"
        )
        stale = [name for name in built if built[name] != committed[name]]
        assert not stale, f"{folder}: {stale} differ from a fresh build; run `make release`"


def test_release_is_reproducible(fresh_build, tmp_path):
    """A second build gives byte-identical output (fixed cell ids, zip order and timestamps).

    The committed release is a second build already (another process, another day): when the
    fresh build equals it, that shows it, and the test costs nothing. Only when they differ (a
    stale commit, or a build that is not reproducible) does it build once more, to tell which.
    """
    folders = ("student_release", "autograder")
    if all(_tree(fresh_build / f) == _tree(ROOT / f) for f in folders):
        return
    out = tmp_path / "again"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "build_release.py"),
            "--no-self-check",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    again, first = _tree(out), _tree(fresh_build)
    differ = sorted(n for n in again.keys() | first.keys() if again.get(n) != first.get(n))
    assert not differ, f"two builds of the same sources differ in {differ[:10]}"


def _solution_lines() -> set[str]:
    """Non-trivial lines between solution markers in the master (the code students write)."""
    lines, inside = set(), False
    for raw in (ASSIGNMENT / "master.py").read_text().splitlines():
        line = raw.strip()
        # Only the in-code markers: the raw-cell markers (`# # BEGIN SOLUTION`) also enclose the
        # given code around the student's part.
        if line == "# BEGIN SOLUTION" and raw != "# # BEGIN SOLUTION":
            inside = True
        elif line == "# END SOLUTION" and raw != "# # END SOLUTION":
            inside = False
        elif inside and len(line) > 25 and not line.startswith(("#", '"""', "def ")):
            lines.add(line)
        elif line.endswith("# SOLUTION"):
            lines.add(line.removesuffix("# SOLUTION").strip())
    assert len(lines) > 40, "the solution scan found too little: has the marker format changed?"
    return lines


def _student_texts() -> dict[str, str]:
    return {
        str(p.relative_to(STUDENT)): p.read_text(errors="replace")
        for p in STUDENT.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_student_release_holds_no_solution_code():
    texts = _student_texts()
    notebook = texts[f"{NAME}.ipynb"]
    leaked = [line for line in _solution_lines() if line in notebook]
    assert not leaked, f"solution lines in the student notebook: {leaked[:5]}"
    # otter itself writes "<!-- BEGIN QUESTION -->" comments around manual questions (for PDFs).
    for marker in (
        "BEGIN SOLUTION",
        "END SOLUTION",
        "# SOLUTION",
        "BEGIN TESTS",
        "# BEGIN QUESTION",
        "ASSIGNMENT CONFIG",
        "BEGIN TEST CONFIG",
        "# HIDDEN",
    ):
        holders = [name for name, text in texts.items() if marker in text]
        assert not holders, f"marker {marker!r} found in {holders}"


def test_student_release_holds_no_hidden_test_or_fixture():
    texts = _student_texts()
    names = set(texts)
    assert not any("hidden" in n or n.endswith(".npz") for n in names), sorted(names)
    assert not any(n.startswith(f"{NAME}/algorithms") for n in names), "solutions module shipped"
    for name, text in texts.items():
        for secret in ("hidden_checks", "hidden_inputs", "hidden_expected"):
            assert secret not in text, f"{name} mentions {secret}"
    nb = nbformat.reads(texts[f"{NAME}.ipynb"], as_version=4)
    shipped_tests = "\n".join(nb.metadata["otter"]["tests"].values())
    assert "hidden" not in shipped_tests.replace("hidden=False", ""), (
        "a hidden test is in the notebook"
    )
    answer_keys = re.findall(
        r"^(q\d+_answer) = (.+?)\s+# SOLUTION$", (ASSIGNMENT / "master.py").read_text(), re.M
    )
    assert answer_keys, "no answer keys found in the master"
    for variable, value in answer_keys:
        assert f"{variable} = {value}" not in texts[f"{NAME}.ipynb"], (
            f"answer key of {variable} shipped"
        )


def test_shipped_modules_never_import_solutions():
    """Support code sits below the algorithms layer: it must run without offline_rl.algorithms."""
    package = STUDENT / NAME
    shipped = {p.name for p in package.glob("*.py")}
    assert shipped == set(SHIPPED), (
        f"shipped {sorted(shipped)} but release.toml says {sorted(SHIPPED)}"
    )
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for module in modules:
                if module.startswith("offline_rl"):
                    target = module.split(".")[1] if "." in module else "__init__"
                    assert target != "algorithms", f"{path.name} imports {module}"
                    assert f"{target}.py" in shipped or module.count(".") > 1, (
                        f"{path.name} imports {module}, which is not shipped"
                    )


def test_autograder_zip_is_normalised_and_complete():
    with zipfile.ZipFile(GRADER / "autograder.zip") as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names), "zip entries must be sorted"
        assert {i.date_time for i in infos} == {(2000, 1, 1, 0, 0, 0)}, (
            "zip timestamps must be fixed"
        )
        for required in (
            "run_autograder",
            "setup.sh",
            "otter_config.json",
            "environment.yml",
            "files/hidden_checks.py",
            "files/hidden_declarations.py",
            "files/hidden_inputs.npz",
            "files/hidden_expected.npz",
            "grading/__main__.py",
            "grading/launcher.py",
        ):
            assert required in names, f"{required} missing from autograder.zip"
        # The shipped grader is the repository's grading/ package, byte for byte.
        for path in sorted((ROOT / "grading").glob("*.py")):
            shipped = zf.read(f"grading/{path.name}")
            assert shipped == path.read_bytes(), f"grading/{path.name} is stale: make release"
        run_autograder = zf.read("run_autograder").decode()
        assert "-m grading /autograder/source" in run_autograder
        assert "run_otter" not in run_autograder
        assert "run_otter.py" not in names
        assert "chmod 0711 /root" in zf.read("setup.sh").decode()
        assert not any("__pycache__" in n for n in names)
        assert not any(n.startswith("files/offline_rl/algorithms") for n in names)
        env = zf.read("environment.yml").decode()
    assert "python=3.11" in env and "download.pytorch.org/whl/cpu" in env, env
    assert re.search(r"^\s*- pytorch", env, re.M) is None, "torch comes from pip, pinned"


def test_every_question_has_a_hidden_test_and_every_declared_check_is_one():
    """The build turns each hidden_check declaration of the master into test_<name>_hidden."""
    with zipfile.ZipFile(GRADER / "autograder.zip") as zf:
        tests = {n: zf.read(n).decode() for n in zf.namelist() if n.startswith("tests/")}
        declarations = zf.read("files/hidden_declarations.py").decode()
    hidden = {n for n, text in tests.items() if "hidden=True" in text}
    assert hidden == set(tests), f"questions without a hidden test: {sorted(set(tests) - hidden)}"
    joined = "\n".join(tests.values())
    declared = re.findall(r'^@hidden_check\(\n\s+"(\w+)"', declarations, re.M)
    assert {"bc_loss", "bc_update", "cql_penalty", "stitching"} <= set(declared), declared
    for check in declared:
        assert f"def test_{check}_hidden(" in joined, f"hidden check {check} missing"
        assert f"hidden_checks.check('{check}'" in joined, f"hidden check {check} not called"
    assert len(re.findall(r"def test_\w+_hidden\(", joined)) == len(declared)


def test_student_notebook_has_stable_ids_and_no_outputs():
    nb = nbformat.read(STUDENT / f"{NAME}.ipynb", as_version=4)
    assert [c["id"] for c in nb.cells] == [f"cell-{i:03d}" for i in range(len(nb.cells))]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert "jupytext" not in nb.metadata


def test_kernel_readable_inputs_hold_no_expected_value():
    """hidden_inputs.npz goes into the student's kernel; expected values must all be elsewhere."""
    with zipfile.ZipFile(GRADER / "autograder.zip") as zf:
        inputs = np.load(io.BytesIO(zf.read("files/hidden_inputs.npz")), allow_pickle=False)
        expected = np.load(io.BytesIO(zf.read("files/hidden_expected.npz")), allow_pickle=False)
        assert inputs.files and expected.files
        assert not [k for k in inputs.files if "expected" in k.rsplit("/", 1)[-1]]
        assert all(k.rsplit("/", 1)[-1].startswith("expected_") for k in expected.files)


#: Drawing modules: importing them in the grader's kernel cost 0.9 CPU-s of each grading
#: (pyplot and its font list, rebuilt in every fresh kernel), ~1.8 s of wall at Gradescope's half
#: CPU, and no graded function needs them (issue 24, benchmarks/README.md).
DRAWING_MODULES = ("matplotlib", "ipywidgets", "offline_rl.plotting", "offline_rl.widgets")
#: The names the notebook binds to them, in the cell tagged otter_ignore after the set-up cell.
DRAWING_NAMES = {"plt", "plotting", "widgets"}


def _drawing_uses(source: str) -> list[str]:
    """The drawing modules a cell imports and the drawing names it reads (magics allowed)."""
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    found = []
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Name) and node.id in DRAWING_NAMES:
            found.append(f"name {node.id}")
        found += [
            f"import {m}" for m in modules
            if any(m == d or m.startswith(f"{d}.") for d in DRAWING_MODULES)
        ]  # fmt: skip
    return found


@pytest.mark.parametrize(
    "notebook", [STUDENT / f"{NAME}.ipynb", GRADER / f"{NAME}-solution.ipynb"], ids=lambda p: p.name
)
def test_graded_cells_never_draw(notebook: Path) -> None:
    """The grader runs every cell not tagged otter_ignore: none may import or use drawing code."""
    from grading.runner import code_cells

    nb = nbformat.read(notebook, as_version=4)
    cells, skipped = code_cells(nb)
    assert cells and skipped, f"{notebook.name}: no graded or no ignored cells"
    drawing = {c.number: uses for c in cells if (uses := _drawing_uses(c.source))}
    assert not drawing, (
        f"{notebook.name}: graded cells (numbered from 1) draw: {drawing}. Move the drawing into "
        "a cell tagged otter_ignore; keep data later graded cells need in a graded cell."
    )
    # The demos still get their drawing: from a cell the grader skips.
    ignored = [c for c in nb.cells if "otter_ignore" in c.metadata.get("tags", [])]
    assert any(_drawing_uses(c.source) for c in ignored), "no ignored cell imports the drawing"


def test_answer_sources_are_closed_to_other_users(fresh_build):
    """A kernel graded with ``--sandbox floor`` on this machine runs as another user and reads
    every world-readable file: after a build, and in a fresh clone that ran only `make test` (CI),
    nothing holding answers is open to it (red team rt9 read reference/ and the master from a
    blank notebook)."""
    solution = ROOT / "autograder" / NAME / f"{NAME}-solution.ipynb"
    secrets = [ROOT / name for name in open_sandbox_paths.ANSWER_SOURCES] + [
        ROOT / "build", ROOT / "autograder" / NAME, solution,
    ]  # fmt: skip
    open_to_others = [
        f"{p.relative_to(ROOT)} {oct(p.stat().st_mode & 0o777)}"
        for p in secrets
        if p.exists() and p.stat().st_mode & 0o077
    ]
    assert not open_to_others, f"readable by other users: {open_to_others}"
