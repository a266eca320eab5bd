"""Build the release: assignments/<name>/ + reference/ -> student_release/ + autograder/.

For each assignment the build

1. stages ``build/<name>/``: the master (``master.py``, jupytext percent format) converted to
   ``<name>.ipynb``, the files the assignment lists in ``release.toml``, the support modules it
   ships copied from ``reference/offline_rl`` (solutions never), and the hidden-test fixtures its
   fixture script generates from ``reference/``;
2. runs ``otter assign`` there (its self-check grades the solution notebook against the new zip);
3. normalises otter's output so that the same inputs give the same bytes: fixed notebook cell ids,
   no editor metadata, a zip named ``autograder.zip`` with sorted entries and fixed timestamps;
   the zip gets the sandboxed grader (``grading/``) and a ``run_autograder`` that calls it in place
   of otter's in-kernel run (see grading/README.md for why);
4. replaces ``student_release/<name>/`` and ``autograder/<name>/`` with the result.

Usage::

    python tools/build_release.py                 # all assignments, into the repository
    python tools/build_release.py --out DIR       # write DIR/student_release, DIR/autograder
    python tools/build_release.py --no-self-check # skip otter's grading of the solution (faster)
"""

from __future__ import annotations

import argparse
import ast
import base64
import fcntl
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# jsonschema (under nbformat and otter) compiles a grammar for its optional IRI format at import
# (~2 CPU-s per process), a format no notebook field uses: skipped, as grading/__init__.py does.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

import jupytext  # noqa: E402
import nbformat  # noqa: E402
import open_sandbox_paths  # noqa: E402
import sync_environment  # noqa: E402

#: ``python -m otter`` without jsonschema's IRI grammar (see the top of this file): otter's own
#: command line otherwise, for ``otter assign`` here and for the tests' plain ``otter run``.
OTTER_CLI = (
    "import sys; sys.modules.setdefault('rfc3987_syntax', None); sys.argv[0] = 'otter'; "
    "from otter.cli import cli; cli()"
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PKG = ROOT / "reference" / "offline_rl"
ZIP_DATE = (2000, 1, 1, 0, 0, 0)
EXECUTABLES = {"run_autograder", "setup.sh"}
GRADING_PKG = ROOT / "grading"
#: Gradescope entry point: the sandboxed grader instead of otter's run_otter.py.
RUN_AUTOGRADER = """#!/usr/bin/env bash
# Written by tools/build_release.py. Grades in a sandbox (grading/README.md), not in otter's kernel.
cd /autograder/source
PY=/root/miniforge3/envs/otter-env/bin/python
[ -x "$PY" ] || PY=python
"$PY" -m grading /autograder/source /autograder/submission /autograder/results
# Whatever happened above, Gradescope must get a valid score written by root, not an empty, broken
# or planted result: check it again (a regular root-owned file, valid JSON, Gradescope's format).
if ! "$PY" -m grading.results /autograder/results/results.json; then
  mkdir -p /autograder/results
  rm -rf /autograder/results/results.json
  msg="The autograder could not start (not your fault): tell the course staff."
  echo "{\\"score\\": 0, \\"output\\": \\"$msg\\"}" > /autograder/results/results.json
fi
"""
#: Appended to otter's setup.sh: the sandbox user must be able to run Python under /root.
SETUP_SUFFIX = """
# Added by tools/build_release.py: the grader runs student kernels as an unprivileged user, which
# must be able to traverse /root to reach /root/miniforge3. Traverse only (/root stays
# unlistable), and every other entry of /root is closed to others, so the bit exposes nothing else.
chmod 0711 /root
# The entry that leads to the environment's real Python stays open too (miniforge3 on Gradescope).
python_top=$(readlink -f /root/miniforge3/envs/otter-env/bin/python | cut -d/ -f3)
find /root -mindepth 1 -maxdepth 1 ! -name miniforge3 ! -name "${python_top:-miniforge3}" \
  -exec chmod go-rwx {} +
# Optional: bubblewrap lets the grader shut each kernel into namespaces where the container allows
# them (grading/README.md); without it, or where they are refused, the grader uses its floor.
(apt-get install -y -qq bubblewrap || (apt-get update -qq && apt-get install -y -qq bubblewrap)) \
  >/dev/null 2>&1 || echo "bubblewrap not installed: the grader will use its floor sandbox"
"""
#: Zip entries only root may read once unzipped (the grader also locks the whole source folder).
SECRET_ENTRIES = ("files/hidden_expected",)


def grader_entries(otter_entries: dict[str, bytes]) -> dict[str, bytes]:
    """Otter's zip entries with the sandboxed grader installed in place of run_otter.py."""
    entries = {k: v for k, v in otter_entries.items() if k != "run_otter.py"}
    entries["run_autograder"] = RUN_AUTOGRADER.encode()
    entries["setup.sh"] = otter_entries["setup.sh"] + SETUP_SUFFIX.encode()
    for path in sorted(GRADING_PKG.glob("*.py")):
        entries[f"grading/{path.name}"] = path.read_bytes()
    return entries


# Notebook metadata that editors add and that would make the release differ between machines.
VOLATILE_CELL_METADATA = ("lines_to_next_cell", "execution", "collapsed", "scrolled")


class BuildError(RuntimeError):
    """The release could not be built; the message says which assignment and why."""


@dataclass(frozen=True)
class AssignmentSpec:
    """What ``assignments/<name>/release.toml`` declares."""

    name: str
    """Assignment name: the notebook is ``<name>.ipynb`` and otter's ``name:`` must match."""
    source: Path
    """The assignment's folder under ``assignments/``."""
    support_modules: tuple[str, ...]
    """Modules of ``reference/offline_rl`` shipped to students as the ``offline_rl`` package."""
    files: tuple[str, ...]
    """Other files of the assignment folder copied into the staging folder."""
    fixture_script: str | None
    """Script (in the assignment folder) run as ``python SCRIPT OUTDIR`` to write fixtures."""
    student_files: tuple[str, ...] = ()
    """Files of the assignment folder given to students only (e.g. the set-up check)."""
    student_requirements: bool = False
    """Ship the runtime pins of requirements.txt to students as ``requirements.txt``, with the
    runtime part of requirements.lock as its ``constraints.txt``."""
    wheel_url: str | None = None
    """``[colab] wheel_url``: where the course published the support wheel, which the set-up cell
    installs on Colab or a bare JupyterHub (its file name must be the wheel's, ``wheel_name()``).
    None: not published; students there upload the wheel beside the notebook instead."""
    wheel_version: str = "0.0.0"
    """``[colab] version``: the wheel's version (raise it with every published release, so that
    pip does not keep a cached older wheel of the same name)."""

    @staticmethod
    def load(folder: Path) -> AssignmentSpec:
        path = folder / "release.toml"
        if not path.exists():
            raise BuildError(f"{folder.name}: no release.toml; see README.md 'Adding a question'.")
        data = tomllib.loads(path.read_text())
        name = data.get("name", folder.name)
        modules = tuple(data.get("support", {}).get("modules", []))
        for module in modules:
            if not (REFERENCE_PKG / module).is_file():
                raise BuildError(f"{name}: release.toml ships {module!r}, not in {REFERENCE_PKG}.")
        return AssignmentSpec(
            name=name,
            source=folder,
            support_modules=modules,
            files=tuple(data.get("files", [])),
            fixture_script=data.get("fixtures", {}).get("script"),
            student_files=tuple(data.get("student", {}).get("files", [])),
            student_requirements=bool(data.get("student", {}).get("requirements", False)),
            wheel_url=data.get("colab", {}).get("wheel_url"),
            wheel_version=str(data.get("colab", {}).get("version", "0.0.0")),
        )

    def wheel_name(self) -> str:
        """File name of the support wheel (PEP 427: distribution-version-py3-none-any)."""
        return f"{WHEEL_DIST.replace('-', '_')}-{self.wheel_version}-py3-none-any.whl"


def stage(spec: AssignmentSpec, staging: Path) -> Path:
    """Lay out the folder otter assign runs in and return the master notebook's path."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    master = jupytext.read(spec.source / "master.py")
    master.metadata = {
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    nb_path = staging / f"{spec.name}.ipynb"
    # Otter merges this into the Gradescope image; it is generated from requirements.txt.
    if sync_environment.main(["--check"]) != 0:
        raise BuildError("environment.yml is stale: run `python tools/sync_environment.py`.")
    shutil.copy2(ROOT / "environment.yml", staging / "environment.yml")
    for rel in spec.files:  # the check engine must be staged before the declarations load
        src = spec.source / rel
        if not src.exists():
            raise BuildError(
                f"{spec.name}: release.toml lists {rel!r}, missing from {spec.source}."
            )
        shutil.copy2(src, staging / rel) if src.is_file() else shutil.copytree(src, staging / rel)
    POINTS[spec.name] = question_points(master)
    DECLARED[spec.name] = declare_checks(spec, master, staging)
    check_corpus(spec.name, POINTS[spec.name], DECLARED[spec.name])
    nbformat.write(master, nb_path)
    package = staging / "offline_rl"
    package.mkdir()
    for module in spec.support_modules:
        shutil.copy2(REFERENCE_PKG / module, package / module)
    if spec.fixture_script:
        run([sys.executable, str(spec.source / spec.fixture_script), str(staging)], spec.name)
    return nb_path


HIDDEN_CHECK_TAG = "hidden_check"
#: assignment -> its hidden-check declarations (filled by stage(), read for the README table).
DECLARED: dict[str, dict[str, Any]] = {}
DECLARATIONS = "hidden_declarations.py"
#: The otter test the build writes in place of each declaration cell (the grader finds checks
#: by the name test_<check>_hidden and passes notebook values by parameter name).
HIDDEN_TEST = '''""" # BEGIN TEST CONFIG
hidden: true{failure_message}
""" # END TEST CONFIG
def test_{name}_hidden({params}):
    import hidden_checks
    hidden_checks.check("{name}", {params})
'''


#: assignment -> question name -> its points and whether it is graded by hand (filled by stage()).
POINTS: dict[str, dict[str, QuestionPoints]] = {}
#: The submission corpus (tests/corpus/mutants.toml) belongs to this assignment.
CORPUS = ROOT / "tests" / "corpus" / "mutants.toml"
CORPUS_ASSIGNMENT = "offline_rl"


@dataclass(frozen=True)
class QuestionPoints:
    """A question's points as the master's ``# BEGIN QUESTION`` cell declares them."""

    name: str
    """Otter's question name (``q4_behavior_cloning``)."""
    points: float
    """Its points: split evenly over its hidden checks (public checks carry none)."""
    manual: bool
    """Graded by hand (``manual: true``): no hidden checks, points given on Gradescope."""


def question_points(master: nbformat.NotebookNode) -> dict[str, QuestionPoints]:
    """Every question of the master with its declared points, in notebook order."""
    found = {}
    for cell in master.cells:
        name = _question_name(cell.source) if cell.cell_type == "raw" else None
        if name:
            points = re.search(r"^#?\s*points:\s*([0-9.]+)\s*$", cell.source, re.M)
            manual = re.search(r"^#?\s*manual:\s*true\s*$", cell.source, re.M | re.I)
            found[name] = QuestionPoints(name, float(points.group(1)) if points else 0.0,
                                         bool(manual))  # fmt: skip
    return found


def split_scores(points: float, n_checks: int) -> list[float]:
    """The scores a question can get: k of its ``n_checks`` hidden checks passed, each worth
    ``points / n_checks``, rounded as the grader rounds (6 decimals), so 4 points over 6 checks
    gives 4.0 for all six, not 3.9999999999999996."""
    return [round(points * k / n_checks, 6) for k in range(n_checks + 1)]


def check_corpus(name: str, points: dict[str, QuestionPoints], registry: dict[str, Any]) -> None:
    """Fail the build when the corpus (tests/corpus/mutants.toml) declares a score the declared
    points can never give, a question that does not exist, or a check no question has.
    Arithmetic on the declarations only: nothing is graded."""
    if name != CORPUS_ASSIGNMENT or not CORPUS.is_file() or not registry:
        return
    checks: dict[str, list[str]] = {}
    for decl in registry.values():
        checks.setdefault(decl.question, []).append(decl.name)
    problems = []
    for mutant in tomllib.loads(CORPUS.read_text()).get("mutant", []):
        label = mutant.get("name", "?")
        if mutant.get("scores") and mutant.get("fails"):
            problems.append(f"{label}: give `scores` or `fails`, not both")
        for question, score in mutant.get("scores", {}).items():
            if question not in checks:
                problems.append(f"{label}: scores names {question!r}, not an autograded "
                                f"question ({', '.join(checks)})")  # fmt: skip
                continue
            allowed = split_scores(points[question].points, len(checks[question]))
            if round(float(score), 6) not in allowed[:-1]:
                problems.append(
                    f"{label}: {question} = {score:g}, but {points[question].points:g} points "
                    f"over {len(checks[question])} hidden check(s) give only "
                    f"{', '.join(f'{a:g}' for a in allowed[:-1])} to a wrong submission; fix the "
                    "score, or say which checks it fails with `fails = [...]`"
                )
        known = {c for cs in checks.values() for c in cs}
        for check in mutant.get("fails", []):
            if check not in known:
                problems.append(f"{label}: fails names {check!r}, not a hidden check")
    if problems:
        raise BuildError(
            f"{name}: {CORPUS.relative_to(ROOT)} disagrees with the points declared in "
            "master.py:\n  " + "\n  ".join(problems)
        )


def total_points_line(points: dict[str, QuestionPoints]) -> str:
    """What the instructor sets as the Gradescope assignment's points."""
    auto = sum(q.points for q in points.values() if not q.manual)
    manual = [q for q in points.values() if q.manual]
    by_hand = sum(q.points for q in manual)
    names = ", ".join(q.name.split("_")[0] for q in manual)
    return (
        f"total points: {auto + by_hand:g} ({auto:g} autograded"
        + (f" + {by_hand:g} graded by hand: {names}" if manual else "")
        + ")"
    )


def student_points_section(points: dict[str, QuestionPoints]) -> str:
    """The students' README's points section, from the master's declarations (its single source):
    each question's points, which are graded by hand, and that the score Gradescope shows at once
    is the autograded part only (so "35 / 35" is not the whole grade)."""
    auto = sum(q.points for q in points.values() if not q.manual)
    manual = [q for q in points.values() if q.manual]
    by_hand = sum(q.points for q in manual)
    rows = ["\n## Points (generated from the notebook)\n"]
    if manual:
        labels = [q.name.split("_")[0].upper() for q in manual]
        names = labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
        rows += [
            f"The notebook is worth {auto + by_hand:g} points: {auto:g} autograded and "
            f"{by_hand:g} for the written answers of {names}, which your instructor grades by "
            f"hand after the deadline. The score you see right after you submit counts the "
            f"autograded questions only (at most {auto:g}); the hand-graded points are added "
            "when your instructor grades the written answers.",
            "",
        ]
    else:
        rows += [f"The notebook is worth {auto:g} points, all autograded.", ""]
    rows += ["| question | points | graded |", "|---|---|---|"]
    for q in points.values():
        how = "by hand, after the deadline" if q.manual else "by the autograder"
        rows.append(f"| {q.name.split('_')[0].upper()} | {q.points:g} | {how} |")
    return "\n".join(rows) + "\n"


def _question_name(source: str) -> str | None:
    match = re.search(r"^#?\s*BEGIN QUESTION\s*\n(?:.*\n)*?name:\s*(\S+)", source, re.M)
    return match.group(1) if match else None


def _master_definitions(master: nbformat.NotebookNode) -> dict[str, list[str] | None]:
    """Top-level names the master defines: functions with their parameters, variables (None)."""
    defined: dict[str, list[str] | None] = {}
    for cell in master.cells:
        if cell.cell_type != "code" or HIDDEN_CHECK_TAG in cell.metadata.get("tags", []):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                defined[node.name] = [a.arg for a in node.args.args]
            elif isinstance(node, ast.Assign):
                defined.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
    return defined


def load_checks(staging: Path) -> ModuleType:
    """The staged check engine with the staged declarations loaded (a fresh module)."""
    path = staging / "hidden_checks.py"
    spec = importlib.util.spec_from_file_location("_staged_hidden_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declare_checks(
    spec: AssignmentSpec, master: nbformat.NotebookNode, staging: Path
) -> dict[str, Any]:
    """Move the master's ``hidden_check`` cells into ``hidden_declarations.py`` and put the otter
    hidden test each one implies in its place; fail naming any inconsistent declaration."""
    if not (staging / "hidden_checks.py").exists():
        return {}
    chunks, question, placed = [], None, []
    for i, cell in enumerate(master.cells):
        if cell.cell_type == "raw" and _question_name(cell.source):
            question = _question_name(cell.source)
        if cell.cell_type == "code" and HIDDEN_CHECK_TAG in cell.metadata.get("tags", []):
            chunks.append(f"# --- {question}\nhidden_check = _hidden_check_in({question!r})\n")
            chunks.append(cell.source.rstrip() + "\n\n")
            placed.append(i)
    header = (
        "# GENERATED by tools/build_release.py from the hidden_check cells of master.py; "
        "edit those.\nimport numpy as np\n\n"
    )
    (staging / DECLARATIONS).write_text(header + "\n".join(chunks))
    try:
        engine = load_checks(staging)
        registry = engine.REGISTRY
    except Exception as err:
        raise BuildError(f"{spec.name}: a hidden_check declaration in master.py: {err}") from err
    defined = _master_definitions(master)
    decls = list(registry.values())
    if len(decls) != len(placed):
        raise BuildError(
            f"{spec.name}: {len(placed)} hidden_check cells declare {len(decls)} checks"
        )
    for decl in decls:
        for graded in decl.graded:
            if graded not in defined:
                raise BuildError(
                    f"{spec.name}: hidden check {decl.name!r} grades {graded!r}, which master.py "
                    "never defines (no `def` or assignment of that name)"
                )
            target = decl.reference[graded]
            if not target.startswith("master:") and defined[graded] is not None:
                module, _, attr = target.partition(":")
                try:
                    ref = getattr(importlib.import_module(module), attr)
                except (ImportError, AttributeError) as err:
                    raise BuildError(
                        f"{spec.name}: hidden check {decl.name!r}: reference {target!r}: {err}"
                    ) from err
                ref_params = list(inspect.signature(ref).parameters)
                if ref_params[: len(defined[graded])] != defined[graded]:
                    raise BuildError(
                        f"{spec.name}: hidden check {decl.name!r}: master's {graded}"
                        f"({', '.join(defined[graded])}) and reference {target}"
                        f"({', '.join(ref_params)}) take different arguments"
                    )
    for index, decl in zip(placed, decls):
        params = ", ".join(engine.parameters(decl))
        # No hint declared, no "Hint:" line (a placeholder would only repeat the failure).
        hint = f"\nfailure_message: {json.dumps(decl.hint)}" if decl.hint else ""  # YAML-quoted
        master.cells[index] = nbformat.v4.new_code_cell(
            HIDDEN_TEST.format(failure_message=hint, name=decl.name, params=params)
        )
    return registry


def gradescope_points(points: dict[str, QuestionPoints]) -> str:
    """How the points are entered on Gradescope, with every number derived from the master.

    Gradescope adds manually graded questions (Edit Outline) to the autograder's points, so the
    autograder gets only the autograded points and the total is never typed in anywhere.
    """
    auto = sum(q.points for q in points.values() if not q.manual)
    manual = [q for q in points.values() if q.manual]
    steps = f"Autograder points: {auto:g} (what results.json reports)"
    if manual:
        each = ", ".join(f"{q.name.split('_')[0]} ({q.points:g} points)" for q in manual)
        total = auto + sum(q.points for q in manual)
        steps += (
            f"; then, in Edit Outline, add {len(manual)} manually graded question(s): {each}. "
            f"Gradescope adds them to the autograder's points: the assignment's total is {total:g}"
        )
    return steps + "."


def checks_table(registry: dict[str, Any], points: dict[str, QuestionPoints] | None = None) -> str:
    """The instructor README's tables: points per question (with the total to set on
    Gradescope), then the hidden checks, one row per declaration with the points it is worth."""
    if not registry:
        return ""
    points = points or {}
    per_question: dict[str, int] = {}
    for decl in registry.values():
        per_question[decl.question] = per_question.get(decl.question, 0) + 1
    rows = []
    if points:
        rows += [
            "\n## Points (generated from the master)\n",
            f"On Gradescope: {gradescope_points(points)}",
            "",
            "| question | points | graded by |",
            "|---|---|---|",
        ]
        for q in points.values():
            how = "hand (Gradescope manual grading)" if q.manual else (
                f"{per_question.get(q.name, 0)} hidden check(s)"
            )  # fmt: skip
            rows.append(f"| {q.name} | {q.points:g} | {how} |")
    rows += [
        "\n## Hidden checks (generated from the master's declarations)\n",
        "| question | check | points | grades | tolerance (rtol, atol) | blames first | hint |",
        "|---|---|---|---|---|---|---|",
    ]
    for decl in registry.values():
        grades = ", ".join(f"`{g}`" for g in decl.graded)
        uses = ", ".join(decl.uses) or "—"
        hint = decl.hint.replace("|", "\\|") or "—"
        share = "—"
        if decl.question in points:
            share = f"{round(points[decl.question].points / per_question[decl.question], 6):g}"
        rows.append(
            f"| {decl.question} | {decl.name} | {share} | {grades} | {decl.tolerance} | {uses} "
            f"| {hint} |"
        )
    return "\n".join(rows) + "\n"


def run(cmd: list[str], name: str, cwd: Path | None = None) -> None:
    """Run ``cmd``; on failure raise BuildError with the tail of its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise BuildError(f"{name}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def normalise_notebook(src: Path, dst: Path, name: str) -> None:
    """Copy a notebook with deterministic cell ids and without volatile metadata.

    Otter's export cell names its zip with a timestamp, so Run All (which runs the export cell
    before the student saves) and the export after saving leave two zips; a fixed name makes the
    second export replace the first.
    """
    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("jupytext", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
        if cell.cell_type == "code" and "grader.export(" in cell.source:
            cell.source = cell.source.replace(
                "grader.export(", f'grader.export(export_path="{name}_submission.zip", ', 1
            )
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)


def normalise_zip(src: Path, dst: Path) -> None:
    """Rewrite otter's zip with the grader, sorted entries, fixed timestamps and permissions."""
    with zipfile.ZipFile(src) as zin:
        entries = {info.filename: zin.read(info) for info in zin.infolist() if not info.is_dir()}
    entries = grader_entries(entries)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name in sorted(entries):
            if "__pycache__" in name:
                continue
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if Path(name).name in EXECUTABLES else 0o644
            if name.startswith(SECRET_ENTRIES):
                mode = 0o600
            info.external_attr = (0o100000 | mode) << 16
            info.create_system = 3  # unix, so the permission bits are honoured
            zout.writestr(info, entries[name], compresslevel=9)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buffer.getvalue())
    os.chmod(dst, 0o600)  # it holds the expected values: for the instructor (and git) only


def ship_student_environment(spec: AssignmentSpec, student_out: Path) -> None:
    """Give students the pinned requirements and the set-up check their README names."""
    if spec.student_requirements:
        reqs = sync_environment.read_requirements(ROOT / "requirements.txt")
        lock = sync_environment.read_requirements(sync_environment.LOCK)
        (student_out / "requirements.txt").write_text(sync_environment.render_student(reqs))
        constraints = student_out / sync_environment.STUDENT_CONSTRAINTS
        constraints.write_text(sync_environment.render_constraints(lock))
    for rel in spec.student_files:
        src = spec.source / rel
        if not src.is_file():
            raise BuildError(f"{spec.name}: release.toml gives students {rel!r}, not a file.")
        shutil.copyfile(src, student_out / rel)


def copy_tree(src: Path, dst: Path, skip: set[str]) -> None:
    """Copy ``src`` into ``dst`` without caches and without the names in ``skip``."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts or rel.parts[0] in skip or path.is_dir():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)


# --------------------------------------------------------------------------- Colab / JupyterHub
#: Distribution name of the support wheel (import name: offline_rl).
WHEEL_DIST = "offline-rl-chapter"
#: Where the wheel goes in the student release (a public file: the support package students get
#: anyway, and the public checks already in their notebook). Publish it at ``[colab] wheel_url``.
WHEEL_DIR = "dist"
#: Runtime pins the wheel keeps exact: what the grade depends on beyond the notebook (otter's
#: checks; the environments' dynamics). Colab has neither otter nor gymnasium 1.4.
WHEEL_PINNED = ("otter-grader", "gymnasium")
#: Runtime packages the wheel requires at any version: Colab's own torch, numpy, matplotlib,
#: tqdm and ipywidgets are kept (re-installing torch there is gigabytes and a kernel restart).
WHEEL_UNPINNED = ("torch", "numpy", "matplotlib", "tqdm", "ipywidgets")
#: The package the wheel adds to offline_rl: the notebook's public checks as otter test files.
PUBLIC_CHECKS_INIT = '''"""The notebook's public checks as otter test files (written by the build).

Where the kernel cannot read the notebook file (Colab), otter finds no checks in its metadata;
``install()`` writes them to ``tests/``, where ``otter.Notebook`` looks then.
"""

import shutil
from pathlib import Path


def install(folder: str = "tests") -> Path:
    """Copy the public checks (one ``<question>.py`` each) into ``folder``; return its path."""
    out = Path(folder)
    out.mkdir(exist_ok=True)
    for path in sorted(Path(__file__).parent.glob("q*.py")):
        shutil.copyfile(path, out / path.name)
    return out
'''
#: The set-up cell the build puts first in both notebooks (before otter's init cell).
SETUP_CELL = """# Set-up. On a laptop set up as README.md says, this does nothing. On Colab, or on a
# JupyterHub that has only this notebook, it installs the course's support package (with
# otter-grader and gymnasium; Colab's torch, numpy, matplotlib are kept) from one wheel, once.
import importlib.util
import os
import sys

# otter imports nbformat, nbformat imports jsonschema, and jsonschema compiles a grammar (~2 s)
# for an optional IRI format check that no notebook uses; without its module it skips that one.
sys.modules.setdefault("rfc3987_syntax", None)
_NEEDED = ("offline_rl", "otter", "gymnasium")
if not all(importlib.util.find_spec(m) for m in _NEEDED):
    # The wheel beside this notebook (on Colab: uploaded with the Files pane) or in the
    # hand-out's dist/ folder; else the course's link, if it published one.
    _WHEEL = "{wheel}"
    _WHEEL = next((p for p in (_WHEEL, "dist/" + _WHEEL) if os.path.exists(p)), {url!r})
    if _WHEEL:
        %pip install --quiet {{_WHEEL}}
        importlib.invalidate_caches()
    if not all(importlib.util.find_spec(m) for m in _NEEDED):
        raise ModuleNotFoundError(
{missing}
        )
# Colab runs the notebook without its file beside the kernel: the public checks come from the wheel.
NOTEBOOK_FILE = "{notebook}" if os.path.exists("{notebook}") else None
if NOTEBOOK_FILE is None and importlib.util.find_spec("offline_rl.public_checks"):
    from offline_rl import public_checks

    public_checks.install("tests")"""
#: What the set-up cell says when the support package is still missing, one string literal a
#: line (after a line naming the link that failed, if the course has one). A student must learn
#: what to do there, not meet a pip error about a placeholder address.
SETUP_MISSING = (
    "The course's support package (offline_rl, with otter-grader and gymnasium) is not ",
    "installed. On your own computer: open this notebook in the folder you were given, beside ",
    "its offline_rl/ folder, with the environment README.md sets up (`python check_setup.py` ",
    "says READY). On Colab: upload the file ",
    "{wheel} (in the hand-out's dist/ folder; ask your instructor ",
    "for it) with the Files pane on the left, then run this cell again.",
)
#: Parts of the template's example URLs: a wheel_url holding one was never filled in.
PLACEHOLDER_MARKERS = (
    "YOUR-ORG",
    "YOUR-COURSE",
    "ORG/REPO",
    "<",
    ">",
    "example.com",
    "example.org",
)
#: Otter's init cell as otter writes it, and as the build rewrites it (the grader skips both).
OTTER_INIT = 'grader = otter.Notebook("{notebook}")'
OTTER_INIT_COLAB = "grader = otter.Notebook(NOTEBOOK_FILE)"


def _wheel_requirements() -> list[str]:
    """``Requires-Dist`` lines: exact pins for WHEEL_PINNED, any version for WHEEL_UNPINNED."""
    reqs = sync_environment.read_requirements(ROOT / "requirements.txt")
    missing = [n for n in (*WHEEL_PINNED, *WHEEL_UNPINNED) if n not in reqs.runtime]
    if missing:
        raise BuildError(f"the wheel needs {missing} among the runtime pins of requirements.txt")
    return [f"{n}=={reqs.runtime[n]}" for n in WHEEL_PINNED] + list(WHEEL_UNPINNED)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel_entries(spec: AssignmentSpec, public_checks: dict[str, str]) -> dict[str, bytes]:
    """Every file of the support wheel by archive path: the shipped modules, the public checks
    (question name -> otter test source), and the ``.dist-info`` metadata with its RECORD."""
    entries = {
        f"offline_rl/{module}": (REFERENCE_PKG / module).read_bytes()
        for module in spec.support_modules
    }
    entries["offline_rl/public_checks/__init__.py"] = PUBLIC_CHECKS_INIT.encode()
    for question, source in sorted(public_checks.items()):
        entries[f"offline_rl/public_checks/{question}.py"] = source.encode()
    info = f"{WHEEL_DIST.replace('-', '_')}-{spec.wheel_version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {WHEEL_DIST}",
        f"Version: {spec.wheel_version}",
        f"Summary: Support package and public checks of the notebook {spec.name}.ipynb",
        "Requires-Python: >=3.10",
        *(f"Requires-Dist: {req}" for req in _wheel_requirements()),
    ]
    entries[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    entries[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tools/build_release.py\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    entries[f"{info}/top_level.txt"] = b"offline_rl\n"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in sorted(entries.items())]
    entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    return entries


def build_wheel(spec: AssignmentSpec, notebook: Path, out_dir: Path) -> Path:
    """Write the support wheel of ``spec`` into ``out_dir`` and return its path.

    The public checks are the otter tests in the student ``notebook``'s metadata (what
    ``grader.check`` runs there). Reproducible: entries in a fixed order with fixed timestamps
    and modes, so the same inputs give the same bytes (no clock, no SOURCE_DATE_EPOCH needed)."""
    meta = nbformat.read(notebook, as_version=4).metadata.get("otter", {})
    public_checks = dict(meta.get("tests", {}))
    if not public_checks:
        raise BuildError(f"{spec.name}: the student notebook holds no public checks for the wheel")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in wheel_entries(spec, public_checks).items():  # RECORD last (PEP 427)
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | 0o644) << 16
            info.create_system = 3
            zout.writestr(info, data, compresslevel=9)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.wheel_name()
    path.write_bytes(buffer.getvalue())
    return path


def setup_cell_source(spec: AssignmentSpec) -> str:
    """The notebook's first cell: install the wheel when a package is missing, from a copy beside
    the notebook or in ``dist/``, else from ``[colab] wheel_url`` if the course published one;
    else (or if that fails) stop with what to do."""
    url = spec.wheel_url or ""
    if url:
        placeholder = [m for m in PLACEHOLDER_MARKERS if m.lower() in url.lower()]
        if placeholder or not url.startswith("https://"):
            raise BuildError(
                f"{spec.name}: [colab] wheel_url {url!r} is not a published https:// address"
                + (f" (it still holds the example's {placeholder[0]!r})" if placeholder else "")
                + ". Publish the wheel and put its address there, or delete wheel_url: Colab "
                "students then upload the wheel themselves (README.instructor.md, 'Colab')."
            )
        if url.rsplit("/", 1)[-1] != spec.wheel_name():
            raise BuildError(
                f"{spec.name}: [colab] wheel_url must end with the wheel's file name "
                f"{spec.wheel_name()!r} (pip reads name and version from it), got {url!r}; "
                "change the URL or [colab] version in release.toml."
            )
    lines = [f"Installing it from {url} failed (pip's message is above). "] if url else []
    lines += [line.format(wheel=spec.wheel_name()) for line in SETUP_MISSING]
    missing = "\n".join(f"            {line!r}" for line in lines)
    return SETUP_CELL.format(
        url=url, wheel=spec.wheel_name(), missing=missing, notebook=f"{spec.name}.ipynb"
    )


def add_setup_cell(notebook: Path, spec: AssignmentSpec) -> None:
    """Put the set-up cell first in ``notebook`` and let otter's init cell work without the
    notebook file (it reads the checks from ``tests/`` then). Cell ids are renumbered."""
    nb = nbformat.read(notebook, as_version=4)
    init = OTTER_INIT.format(notebook=f"{spec.name}.ipynb")
    if not (nb.cells and init in nb.cells[0].source):
        raise BuildError(f"{spec.name}: otter's init cell ({init}) is not the notebook's first")
    nb.cells[0].source = nb.cells[0].source.replace(init, OTTER_INIT_COLAB)
    setup = nbformat.v4.new_code_cell(setup_cell_source(spec))
    # Shown collapsed (JupyterLab, Notebook 7): ~30 lines of install logic are not the first
    # thing a student should read; one click shows them (student review, session 10).
    setup.metadata["jupyter"] = {"source_hidden": True}
    nb.cells.insert(0, setup)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    nbformat.validate(nb)
    nbformat.write(nb, notebook)


def build(spec: AssignmentSpec, out: Path, self_check: bool) -> dict[str, float]:
    """Build one assignment into ``out/student_release/<name>`` and ``out/autograder/<name>``."""
    t0 = time.perf_counter()
    (ROOT / "build").mkdir(exist_ok=True)
    os.chmod(ROOT / "build", 0o700)  # fixtures with expected values are staged there
    open_sandbox_paths.close_answer_sources()
    staging = ROOT / "build" / spec.name
    nb_path = stage(spec, staging)
    dist = staging / "dist"
    cmd = [sys.executable, "-c", OTTER_CLI, "assign", nb_path.name, "dist"]
    if not self_check:
        cmd.append("--no-run-tests")
    env_note = "" if self_check else " (self-check skipped)"
    proc = subprocess.run(cmd, cwd=staging, capture_output=True, text=True)
    zips = sorted((dist / "autograder").glob("*.zip"))
    if proc.returncode != 0 or "Some autograder tests failed" in proc.stderr or not zips:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-60:])
        raise BuildError(
            f"{spec.name}: otter assign did not give the solution notebook full marks "
            f"(exit {proc.returncode}). Fix the question named below in assignments/"
            f"{spec.name}/master.py, or its fixtures:\n{tail}"
        )

    student_out = out / "student_release" / spec.name
    grader_out = out / "autograder" / spec.name
    for folder in (student_out, grader_out):
        if folder.exists():
            shutil.rmtree(folder)
    notebook = f"{spec.name}.ipynb"
    copy_tree(dist / "student", student_out, skip={notebook})
    normalise_notebook(dist / "student" / notebook, student_out / notebook, spec.name)
    add_setup_cell(student_out / notebook, spec)
    build_wheel(spec, student_out / notebook, student_out / WHEEL_DIR)
    ship_student_environment(spec, student_out)
    grader_out.mkdir(parents=True)
    os.chmod(grader_out, 0o700)  # before the solution is written into it (red team rt10)
    for readme, target in (
        ("README.student.md", student_out),
        ("README.instructor.md", grader_out),
    ):
        if (spec.source / readme).exists():
            shutil.copyfile(spec.source / readme, target / "README.md")
    with open(grader_out / "README.md", "a") as readme:
        readme.write(checks_table(DECLARED.get(spec.name, {}), POINTS.get(spec.name)))
    if (student_out / "README.md").exists() and spec.name in POINTS:
        with open(student_out / "README.md", "a") as readme:
            readme.write(student_points_section(POINTS[spec.name]))
    normalise_zip(zips[0], grader_out / "autograder.zip")
    solution = grader_out / f"{spec.name}-solution.ipynb"
    normalise_notebook(dist / "autograder" / notebook, solution, spec.name)
    add_setup_cell(solution, spec)
    # The solution and the zip (expected values) are for the builder only: a floor kernel on
    # this machine reads every world-readable file (grading/README.md, item 16).
    os.chmod(solution, 0o600)
    os.chmod(grader_out, 0o700)
    seconds = time.perf_counter() - t0
    total = total_points_line(POINTS[spec.name])
    print(f"built {spec.name}{env_note} in {seconds:.1f} s; {total}")
    print(f"On Gradescope: {gradescope_points(POINTS[spec.name])}")
    if not spec.wheel_url:
        print(
            f"note: release.toml has no [colab] wheel_url: on Colab, students upload "
            f"{WHEEL_DIR}/{spec.wheel_name()} themselves (the set-up cell says so); publish it "
            "and set wheel_url for a one-cell set-up (README.instructor.md)."
        )
    print("files:")
    for path in sorted(p for p in (*student_out.rglob("*"), *grader_out.rglob("*")) if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size:,} bytes)")
    return {"seconds": seconds}


def discover() -> list[AssignmentSpec]:
    """Every ``assignments/<name>/`` holding a ``master.py``."""
    folders = sorted(p.parent for p in (ROOT / "assignments").glob("*/master.py"))
    return [AssignmentSpec.load(folder) for folder in folders]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT, help="where student_release/ and autograder/ go"
    )
    parser.add_argument(
        "--no-self-check", action="store_true", help="skip otter's solution grading"
    )
    parser.add_argument("names", nargs="*", help="assignments to build (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    specs = [s for s in discover() if not args.names or s.name in args.names]
    if not specs:
        print("nothing to build: no assignments/<name>/master.py found", file=sys.stderr)
        return 1
    (ROOT / "build").mkdir(exist_ok=True)
    # Builds share the staging folder build/<name>: two at once (a test building into --out while
    # another rebuilds) would delete each other's files, so they take turns.
    with open(ROOT / "build" / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for spec in specs:
                build(spec, args.out.resolve(), self_check=not args.no_self_check)
        except BuildError as err:
            print(f"release build failed: {err}", file=sys.stderr)
            return 1
    manifest = {s.name: sorted(s.support_modules) for s in specs}
    print("release written for:", json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
