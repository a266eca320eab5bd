"""How the notebook shows otter's public-check results, and helpers its public checks share.

Nothing here grades: the display formatters change only how results look, and the helpers
(:func:`call_cql_penalty`) only turn a student's error into a message that says what to fix.

Two things otter 7 does not do the way a student reads them:

* A question whose public check can only test the answer's *format* (a multiple-choice letter, a
  number) would print "All test cases passed!" for a wrong answer. Its result says instead
  :data:`FORMAT_ONLY`. Such a check is recognised by its test functions' names: every public test
  of the question is named ``test_..._format``.
* ``grader.check_all()`` sorts question names as strings (``otter.check.utils``), which puts q10,
  q11 and q12 before q1. Its results are shown in question-number order.

Both are IPython display formatters registered by :func:`install` (``import offline_rl`` calls it
inside a notebook kernel), so the cells otter generates (``grader.check("q10_...")``,
``grader.check_all()``) stay exactly as otter writes them, which the grader relies on to find
them. Otter is never imported here: the formatters are registered by class name.
"""

from __future__ import annotations

import html
import re
import sys
from typing import Any

#: What a passed format-only check says, in place of otter's "passed".
FORMAT_ONLY = "answer format OK: correctness is graded after you submit"
#: Otter's result classes, by module and name (subclasses such as ExceptionTestFile match too).
TEST_FILE = ("otter.test_files.abstract_test", "TestFile")
GRADING_RESULTS = ("otter.test_files", "GradingResults")


def is_format_only(result: Any) -> bool:
    """Whether every test case of an otter test-file result is a ``test_..._format`` test."""
    names = [
        getattr(getattr(r.test_case, "body", None), "test_func", None)
        for r in result.test_case_results
    ]
    return bool(names) and all(getattr(f, "__name__", "").endswith("_format") for f in names)


def _honest(result: Any) -> bool:
    """A passed format-only check: shown as :data:`FORMAT_ONLY`, not as "passed"."""
    return bool(result.test_case_results) and result.passed_all and is_format_only(result)


def test_file_html(result: Any) -> str:
    """One question's result as HTML: otter's own unless it is a passed format-only check."""
    if _honest(result):
        name = html.escape(result.name)
        return f"<p><strong><pre style='display: inline;'>{name}</pre></strong>: {FORMAT_ONLY}</p>"
    return result._repr_html_()


def test_file_text(result: Any) -> str:
    """One question's result as text: otter's summary unless it is a passed format-only check."""
    return f"{result.name} results: {FORMAT_ONLY}" if _honest(result) else result.summary()


def question_order(name: str) -> tuple[Any, ...]:
    """Sort key putting q2 before q10 (numbers compared as numbers), then the rest of the name."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def grading_results_text(results: Any) -> str:
    """``grader.check_all()``'s results in question order, format-only checks said as such."""
    if getattr(results, "_catastrophic_error", None):
        return str(results._catastrophic_error)
    ordered = sorted(results.results.items(), key=lambda item: question_order(item[0]))
    return "\n\n".join(test_file_text(result) for _, result in ordered)


def install(shell: Any = None) -> bool:
    """Register the formatters with the running IPython kernel; False outside one."""
    if shell is None:
        ipython = sys.modules.get("IPython")  # not imported: not in a kernel, nothing to do
        shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    formatters = shell.display_formatter.formatters
    formatters["text/html"].for_type_by_name(*TEST_FILE, test_file_html)
    formatters["text/plain"].for_type_by_name(
        *TEST_FILE, lambda obj, printer, cycle: printer.text(test_file_text(obj))
    )
    formatters["text/plain"].for_type_by_name(
        *GRADING_RESULTS, lambda obj, printer, cycle: printer.text(grading_results_text(obj))
    )
    return True


def call_cql_penalty(cql_penalty: Any, q: Any, actions: Any) -> Any:
    """``cql_penalty`` on float32 Q-values ``q`` (B, n_actions) and ``actions`` (B,).

    A log-sum-exp over the wrong axis makes torch raise "... must match ..." when the result meets
    Q(s_i, a_i): that error becomes an AssertionError saying which axis the sum must run over.
    """
    import numpy as np  # not the notebook's: a public check must not depend on student imports
    import torch

    shape = np.shape(q)
    try:
        return cql_penalty(torch.tensor(q, dtype=torch.float32), torch.tensor(actions))
    except RuntimeError as err:
        if "must match" not in str(err):
            raise
        raise AssertionError(
            f"cql_penalty failed on Q-values of shape (B, n_actions) = {shape}: "
            f"{str(err).splitlines()[0].rstrip('.')}. Is the log-sum-exp taken over the actions "
            "(dim=1)? It must give one value per state, shape (B,), like Q(s_i, a_i)."
        ) from None
