"""Tampering gains nothing: each attack works on plain ``otter run`` and fails in our grader.

The plain-otter half is marked ``xfail(strict=True)``: it must fail there (the attack gains points
or shows hidden values); if otter ever stops being fooled the xfail turns into an error and this
file needs a new look. The sandboxed half must pass, and runs for every attack.

Plain otter runs once per attack CLASS, not once per attack (each plain run costs a full otter
grading, 25-40 s): the attacks of one class fool otter for one reason, so one representative
documents it, and the sandboxed half still grades every attack. The classes:

* code in the student's kernel replaces what the tests call: otter's test classes
  (``monkeypatch_otter``, the representative), otter's ``Checker`` (``redefine_grader``), the
  import of the hidden checks (``monkeypatch_builtins``), numpy's and torch's comparisons
  (``monkeypatch_numpy_torch``): otter runs its tests in that same kernel;
* the kernel rewrites the test and fixture files on disk (``rewrite_tests_and_fixtures``): otter
  reads them after the student's code ran, from a folder the kernel can write;
* the kernel reads the expected values (``read_and_print_expected``): otter's fixtures sit where
  the kernel can read them.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_root
from tests.corpus import attacks, corpus

pytestmark = [pytest.mark.grading, pytest.mark.slow]


class AttackSucceededError(AssertionError):
    """The attack gained points or showed hidden values."""


FOOLED = pytest.mark.xfail(
    strict=True, raises=AttackSucceededError, reason="otter runs the tests in the student's kernel"
)
PLAIN = pytest.param("plain-otter", marks=FOOLED)
GRADERS = [PLAIN, "sandboxed"]
#: The other attacks of an already documented class: the sandboxed grader only (see the docstring).
SANDBOXED = ["sandboxed"]


def _grade(grader: str, nb) -> tuple[dict[str, float], dict]:
    if grader == "sandboxed":
        require_root()
        results = corpus.grade(nb)
        return corpus.question_scores(results), results
    results = corpus.grade_plain_otter(nb)
    return corpus.otter_question_scores(results), results


def _attacked(name: str, base):
    anchor = attacks.ANSWER_ANCHOR if name == "read_and_print_expected" else None
    return corpus.insert_cell(base, attacks.ATTACKS[name], after=anchor)


@pytest.mark.parametrize(
    ("name", "grader"),
    [
        pytest.param("monkeypatch_otter", "plain-otter", marks=FOOLED),
        ("monkeypatch_otter", "sandboxed"),
        pytest.param("rewrite_tests_and_fixtures", "plain-otter", marks=FOOLED),
        ("rewrite_tests_and_fixtures", "sandboxed"),
        ("redefine_grader", "sandboxed"),
        ("monkeypatch_builtins", "sandboxed"),
    ],
)
def test_attack_on_blank_notebook_scores_zero(name, grader):
    scores, _ = _grade(grader, _attacked(name, corpus.student()))
    gained = {q: s for q, s in scores.items() if s > 0}
    if gained:
        raise AttackSucceededError(f"{name} gained points with nothing implemented: {gained}")


@pytest.fixture(scope="module")
def cql_max_mutant():
    mutant = next(m for m in corpus.load_mutants() if m.name == "cql_max_not_logsumexp")
    return corpus.apply(corpus.solution(), mutant), mutant


@pytest.mark.parametrize("grader", SANDBOXED)
def test_patching_numpy_and_torch_does_not_hide_a_wrong_penalty(cql_max_mutant, grader):
    nb, mutant = cql_max_mutant
    scores, _ = _grade(grader, _attacked("monkeypatch_numpy_torch", nb))
    if scores["q5_cql"] != mutant.scores["q5_cql"]:
        raise AttackSucceededError(
            f"patched comparisons turned a max-for-logsumexp penalty into {scores['q5_cql']} points"
        )


@pytest.mark.parametrize("grader", GRADERS)
def test_hidden_expected_values_cannot_be_read_or_used(grader):
    scores, results = _grade(grader, _attacked("read_and_print_expected", corpus.student()))
    if "LEAKED" in str(results):
        raise AttackSucceededError("expected values reached the student's visible output")
    gained = {q: s for q, s in scores.items() if s > 0}
    if gained:
        raise AttackSucceededError(f"answers copied from the expected values earned {gained}")


@pytest.mark.parametrize(
    "plant",
    [
        "os.mkfifo('.outputs/q10.npz')",
        "os.rename('.outputs', '.moved')\nos.symlink('/autograder/source/files', '.outputs')",
    ],
    ids=["fifo", "symlinked-folder"],
)
def test_planted_outputs_cannot_hang_or_fool_the_grader(plant):
    """The kernel owns its output folder: it may plant a FIFO (opening one would block the grader
    forever) or swap the folder for a link elsewhere. Either way it only loses its own points."""
    require_root()
    cell = f"import os, _grading_kernel\n{plant}\n_grading_kernel.harvest = lambda *a, **k: None\n"
    results = corpus.grade(corpus.insert_cell(corpus.solution(), cell))
    assert results["score"] == 0, corpus.question_scores(results)
    assert "could not be read" in str(results)
