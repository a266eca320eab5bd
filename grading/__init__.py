"""Sandboxed grading of otter notebooks.

The student's kernel runs unprivileged; scores are computed outside it (see README.md).
"""

import sys

# nbformat validates notebooks with jsonschema, whose optional IRI format checker
# (rfc3987_syntax, pulled in by jupyterlab's dependencies) compiles a grammar on import: one
# second of every grading, for a format that no notebook field uses. Without the module
# jsonschema skips that one format; every other check of the notebook's schema still runs.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
