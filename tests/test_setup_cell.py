"""The notebook's set-up cell: it never sends a student to a placeholder address, and it keeps
otter's start cheap (jsonschema's IRI grammar is not built).

Where the support package is missing (Colab, a bare JupyterHub) the cell installs the wheel from
beside the notebook or the hand-out's ``dist/``, else from ``[colab] wheel_url`` if the course
published one, else stops with what to do; the build refuses a wheel_url that is still the
template's example (the student reviewer met ``YOUR-ORG/YOUR-COURSE`` in the first cell).

otter imports nbformat, nbformat imports jsonschema, and jsonschema imports the optional
``rfc3987_syntax`` when it is installed (jupyterlab's dependencies install it), whose import
compiles a lark grammar: about 2 CPU-s of the otter init cell, for a format no notebook uses.
The set-up cell blocks that one optional import (as ``grading/__init__.py`` does for the grader).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_release  # noqa: E402

#: Run after the set-up cell, in a fresh interpreter: what jsonschema loaded, and whether
#: nbformat still validates a notebook (every other check of its schema still runs).
_PROBE = """
import sys
import jsonschema
import nbformat

nbformat.validate(nbformat.v4.new_notebook())
bad = nbformat.v4.new_notebook()
bad.cells.append({"cell_type": "code", "source": "", "metadata": {}})  # no outputs field
try:
    nbformat.validate(bad)
except nbformat.ValidationError:
    print("invalid notebook refused")
print("rfc3987_syntax:", sys.modules.get("rfc3987_syntax", "never imported"))
print("iri format:", "iri" in jsonschema.FormatChecker.checkers)
"""


def _setup_then(probe: str, tmp_path: Path) -> str:
    """stdout of a fresh Python that runs the set-up cell (IPython's transform), then ``probe``."""
    from IPython.core.inputtransformer2 import TransformerManager

    spec = build_release.AssignmentSpec.load(ROOT / "assignments" / "offline_rl")
    cell = TransformerManager().transform_cell(build_release.setup_cell_source(spec))
    (tmp_path / f"{spec.name}.ipynb").write_text("{}")  # a laptop: the notebook beside the kernel
    done = subprocess.run(
        [sys.executable, "-c", cell + probe], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_set_up_cell_keeps_jsonschema_from_compiling_the_iri_grammar(tmp_path):
    import importlib.metadata

    # The cost exists only where the optional package is installed: the pinned venv has it.
    # (Asked of its metadata: tests/conftest.py blocks its import in this process too.)
    try:
        importlib.metadata.distribution("rfc3987-syntax")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("rfc3987_syntax is no longer installed")
    out = _setup_then(_PROBE, tmp_path)
    assert "rfc3987_syntax: None" in out, out  # blocked, never imported
    assert "iri format: False" in out, out
    assert "invalid notebook refused" in out, out  # nbformat's validation still works


# --------------------------------------------------------------------------- install paths
def _spec(**changes: str | None) -> build_release.AssignmentSpec:
    spec = build_release.AssignmentSpec.load(ROOT / "assignments" / "offline_rl")
    return dataclasses.replace(spec, **changes)


def _run_without_offline_rl(spec: build_release.AssignmentSpec, folder: Path) -> tuple[list, str]:
    """Run the set-up cell in ``folder`` with ``offline_rl`` not importable and pip recorded, not
    run (IPython expands ``{_WHEEL}`` from the cell's namespace, as here); return the pip lines
    and the error the cell raised ("" if none)."""
    import importlib.util

    from IPython.core.inputtransformer2 import TransformerManager

    calls: list[str] = []

    class Shell:
        def run_line_magic(self, name: str, line: str) -> None:
            calls.append(f"{name} {line.format(**sys._getframe(1).f_globals)}")

    code = TransformerManager().transform_cell(build_release.setup_cell_source(spec))
    real = importlib.util.find_spec
    cwd = Path.cwd()
    try:
        importlib.util.find_spec = lambda n, *a: None if n == "offline_rl" else real(n, *a)
        import os

        os.chdir(folder)
        exec(code, {"get_ipython": Shell})
    except ModuleNotFoundError as err:
        return calls, str(err)
    finally:
        importlib.util.find_spec = real
        os.chdir(cwd)
    return calls, ""


def test_the_shipped_set_up_cell_holds_no_placeholder_address():
    cell = build_release.setup_cell_source(_spec())
    assert "YOUR-ORG" not in cell  # what the student reviewer met in the first cell
    for marker in build_release.PLACEHOLDER_MARKERS:
        assert marker.lower() not in cell.lower(), marker


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/YOUR-ORG/YOUR-COURSE/raw/main/student_release/offline_rl/dist/{wheel}",
        "https://github.com/<org>/<course>/raw/main/dist/{wheel}",
        "http://course.example.net/{wheel}",
    ],
)
def test_the_build_refuses_a_wheel_url_that_was_never_published(url):
    spec = _spec()
    bad = _spec(wheel_url=url.format(wheel=spec.wheel_name()))
    with pytest.raises(build_release.BuildError, match="not a published https:// address"):
        build_release.setup_cell_source(bad)


def test_without_a_link_or_wheel_the_cell_says_what_to_do(tmp_path):
    spec = _spec(wheel_url=None)
    calls, error = _run_without_offline_rl(spec, tmp_path)
    assert calls == []  # no pip call to an address that does not exist
    what_to_do = (
        "beside its offline_rl/ folder",
        "check_setup.py",
        spec.wheel_name(),
        "Files pane",
    )
    for words in what_to_do:
        assert words in error, (words, error)


@pytest.mark.parametrize("where", [".", "dist"])
def test_the_cell_installs_the_wheel_found_beside_the_notebook(tmp_path, where):
    spec = _spec(wheel_url=f"https://course.invalid/files/{_spec().wheel_name()}")
    wheel = Path(where) / spec.wheel_name()
    (tmp_path / where).mkdir(exist_ok=True)
    (tmp_path / wheel).write_bytes(b"")
    calls, _ = _run_without_offline_rl(spec, tmp_path)
    assert calls == [f"pip install --quiet {wheel.as_posix()}"]  # the file first, not the link


def test_a_failed_install_from_the_link_names_it_and_what_to_do(tmp_path):
    spec = _spec(wheel_url=f"https://course.invalid/files/{_spec().wheel_name()}")
    calls, error = _run_without_offline_rl(spec, tmp_path)  # pip "ran"; offline_rl still missing
    assert calls == [f"pip install --quiet {spec.wheel_url}"]
    assert f"Installing it from {spec.wheel_url} failed" in error, error
    assert "Files pane" in error, error


def test_the_shipped_set_up_cell_is_shown_collapsed_and_first():
    """A student's first sight is the notebook's title, not ~30 lines of install logic (student
    review, session 10): the set-up cell comes first with its source collapsed, one click away."""
    nb = json.loads((ROOT / "student_release" / "offline_rl" / "offline_rl.ipynb").read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "code" and "importlib.util" in "".join(first["source"])
    assert first["metadata"].get("jupyter", {}).get("source_hidden") is True, first["metadata"]
