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
import fcntl
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

import jupytext
import nbformat
import sync_environment

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
        )


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
    DECLARED[spec.name] = declare_checks(spec, master, staging)
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
hidden: true
failure_message: {hint}
""" # END TEST CONFIG
def test_{name}_hidden({params}):
    import hidden_checks
    hidden_checks.check("{name}", {params})
'''


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
        hint = json.dumps(decl.hint or "see the message above")  # a YAML-safe quoted string
        master.cells[index] = nbformat.v4.new_code_cell(
            HIDDEN_TEST.format(hint=hint, name=decl.name, params=params)
        )
    return registry


def checks_table(registry: dict[str, Any]) -> str:
    """The instructor README's table of hidden checks, one row per declaration."""
    if not registry:
        return ""
    rows = [
        "\n## Hidden checks (generated from the master's declarations)\n",
        "| question | check | grades | tolerance (rtol, atol) | blames first | hint |",
        "|---|---|---|---|---|---|",
    ]
    for decl in registry.values():
        grades = ", ".join(f"`{g}`" for g in decl.graded)
        uses = ", ".join(decl.uses) or "—"
        hint = decl.hint.replace("|", "\\|") or "—"
        rows.append(
            f"| {decl.question} | {decl.name} | {grades} | {decl.tolerance} | {uses} | {hint} |"
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


def build(spec: AssignmentSpec, out: Path, self_check: bool) -> dict[str, float]:
    """Build one assignment into ``out/student_release/<name>`` and ``out/autograder/<name>``."""
    t0 = time.perf_counter()
    (ROOT / "build").mkdir(exist_ok=True)
    os.chmod(ROOT / "build", 0o700)  # fixtures with expected values are staged there
    staging = ROOT / "build" / spec.name
    nb_path = stage(spec, staging)
    dist = staging / "dist"
    cmd = [sys.executable, "-m", "otter", "assign", nb_path.name, "dist"]
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
    ship_student_environment(spec, student_out)
    grader_out.mkdir(parents=True)
    for readme, target in (
        ("README.student.md", student_out),
        ("README.instructor.md", grader_out),
    ):
        if (spec.source / readme).exists():
            shutil.copyfile(spec.source / readme, target / "README.md")
    with open(grader_out / "README.md", "a") as readme:
        readme.write(checks_table(DECLARED.get(spec.name, {})))
    normalise_zip(zips[0], grader_out / "autograder.zip")
    normalise_notebook(
        dist / "autograder" / notebook, grader_out / f"{spec.name}-solution.ipynb", spec.name
    )
    # The solution and the zip (expected values) are for the builder only: a floor kernel on
    # this machine reads every world-readable file (grading/README.md, item 16).
    os.chmod(grader_out / f"{spec.name}-solution.ipynb", 0o600)
    os.chmod(grader_out, 0o700)
    seconds = time.perf_counter() - t0
    print(f"built {spec.name}{env_note} in {seconds:.1f} s:")
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
