"""What the student's own ``grader.check`` says about a corpus entry, without a kernel.

Each wrong entry of ``mutants.toml`` declares ``public_warns``: whether the public checks of the
questions it loses points on fail (``true``) or pass it (``false``, a mistake the student learns
about only after the deadline). Verifying that must be cheap, so it runs in this process, not
through the grader: the corpus is our own code (edits of the solution), not an untrusted
submission, so the sandbox that protects the grader from students is not needed here. Only the
definitions are executed (imports, ``def``, ``class``, ``*_answer = ...``), never the demos or
experiments, and then the public tests exactly as the student notebook ships them (its otter
metadata), through otter's own test runner.
"""

from __future__ import annotations

import ast
from typing import Any

import nbformat
from otter.test_files.exception_test import ExceptionTestFile

#: Top-level statements kept from the notebook's code cells: definitions only.
_KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)


def definitions(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """The namespace the notebook's definitions build (functions, classes, imports, answers)."""
    env: dict[str, Any] = {"__name__": "__corpus_public__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics: no definitions there
            continue
        # An answer may be computed from the answer cell's own working variables (q11), so a cell
        # that assigns an ``*_answer`` keeps all its top-level assignments (cheap arithmetic).
        answer_cell = any(
            isinstance(node, ast.Assign)
            and all(isinstance(t, ast.Name) and t.id.endswith("_answer") for t in node.targets)
            for node in tree.body
        )
        body = [
            node
            for node in tree.body
            if (
                isinstance(node, _KEPT)
                and not (isinstance(node, ast.Import) and node.names[0].name == "otter")
            )
            or (answer_cell and isinstance(node, ast.Assign))
        ]
        exec(compile(ast.Module(body=body, type_ignores=[]), "<corpus>", "exec"), env)
    return env


def public_failures(
    nb: nbformat.NotebookNode, student: nbformat.NotebookNode, questions: list[str]
) -> dict[str, list[str]]:
    """Question -> the public test cases of ``student``'s metadata that fail on ``nb``'s code."""
    import torch

    torch.set_num_threads(1)  # as the notebook's set-up cell does
    env = definitions(nb)
    tests = student.metadata["otter"]["tests"]
    failed: dict[str, list[str]] = {}
    for question in questions:
        if question not in tests:
            continue
        test_file = ExceptionTestFile.from_string(tests[question], path=question)
        test_file.run(env)
        failed[question] = [r.message for r in test_file.test_case_results if not r.passed]
    return failed


def warns(failures: dict[str, list[str]]) -> bool:
    """Whether grader.check would show a failure on at least one of the questions."""
    return any(failures.values())
