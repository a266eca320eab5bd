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
import io
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

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
find /root -mindepth 1 -maxdepth 1 ! -name miniforge3 -exec chmod go-rwx {} +
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
    nbformat.write(master, nb_path)
    # Otter merges this into the Gradescope image; it is generated from requirements.txt.
    shutil.copy2(ROOT / "environment.yml", staging / "environment.yml")
    for rel in spec.files:
        src = spec.source / rel
        if not src.exists():
            raise BuildError(
                f"{spec.name}: release.toml lists {rel!r}, missing from {spec.source}."
            )
        shutil.copy2(src, staging / rel) if src.is_file() else shutil.copytree(src, staging / rel)
    package = staging / "offline_rl"
    package.mkdir()
    for module in spec.support_modules:
        shutil.copy2(REFERENCE_PKG / module, package / module)
    if spec.fixture_script:
        run([sys.executable, str(spec.source / spec.fixture_script), str(staging)], spec.name)
    return nb_path


def run(cmd: list[str], name: str, cwd: Path | None = None) -> None:
    """Run ``cmd``; on failure raise BuildError with the tail of its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise BuildError(f"{name}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def normalise_notebook(src: Path, dst: Path) -> None:
    """Copy a notebook with deterministic cell ids and without volatile metadata."""
    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("jupytext", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
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
    normalise_notebook(dist / "student" / notebook, student_out / notebook)
    grader_out.mkdir(parents=True)
    for readme, target in (
        ("README.student.md", student_out),
        ("README.instructor.md", grader_out),
    ):
        if (spec.source / readme).exists():
            shutil.copyfile(spec.source / readme, target / "README.md")
    normalise_zip(zips[0], grader_out / "autograder.zip")
    normalise_notebook(dist / "autograder" / notebook, grader_out / f"{spec.name}-solution.ipynb")
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
