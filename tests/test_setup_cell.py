"""The notebook's set-up cell keeps otter's start cheap: jsonschema's IRI grammar is not built.

otter imports nbformat, nbformat imports jsonschema, and jsonschema imports the optional
``rfc3987_syntax`` when it is installed (jupyterlab's dependencies install it), whose import
compiles a lark grammar: about 2 CPU-s of the otter init cell, for a format no notebook uses.
The set-up cell blocks that one optional import (as ``grading/__init__.py`` does for the grader).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    import importlib.util

    # The cost exists only where the optional package is installed: the pinned venv has it.
    assert importlib.util.find_spec("rfc3987_syntax"), "rfc3987_syntax is no longer installed"
    out = _setup_then(_PROBE, tmp_path)
    assert "rfc3987_syntax: None" in out, out  # blocked, never imported
    assert "iri format: False" in out, out
    assert "invalid notebook refused" in out, out  # nbformat's validation still works
