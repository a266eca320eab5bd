"""The submission corpus (tests/corpus/mutants.toml) graded by the release's autograder.

Every wrong submission must get exactly its declared score on each question (full marks on the
others); every valid variant full marks; every hidden check must fail at least one wrong
submission. ``make corpus`` runs this file alone; ``python tools/kill_matrix.py`` prints the
matrix. Each submission is graded once per test run (``grade_once``), by whichever pytest-xdist
worker gets its test first, each worker with its own sandbox user; the tests that need them all
reuse those gradings.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import require_root
from tests.corpus import corpus

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

MUTANTS = corpus.load_mutants()


@pytest.fixture
def graded(grade_once):
    """name -> results, grading on first use ("solution" or a mutant's name)."""
    require_root()
    by_name = {m.name: m for m in MUTANTS}

    def get(name: str) -> dict:
        nb = corpus.solution()
        return grade_once(nb if name == "solution" else corpus.apply(nb, by_name[name]))

    return get


def test_corpus_is_big_enough():
    wrong = [m for m in MUTANTS if m.kind == "wrong"]
    valid = [m for m in MUTANTS if m.kind == "valid"]
    assert len(wrong) >= 15 and len(valid) >= 5, (len(wrong), len(valid))
    assert all(m.scores or m.fails for m in wrong), "a wrong submission must declare what it loses"
    assert not any(m.scores or m.fails for m in valid), "valid variants get full marks"


def test_solution_gets_full_marks(graded):
    results = graded("solution")
    assert corpus.question_scores(results) == corpus.full_marks(results)
    assert results["score"] == sum(corpus.full_marks(results).values())


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_submission_gets_its_declared_score(graded, mutant):
    results = graded(mutant.name)
    full = corpus.full_marks(graded("solution"))
    got, want = corpus.question_scores(results), corpus.expected_scores(mutant, full)
    diff = {q: f"got {got[q]:g}, expected {want[q]:g}" for q in full if got.get(q) != want[q]}
    assert not diff, f"{mutant.name} ({mutant.why}): {diff}"
    if mutant.kind == "wrong":
        lost = [t for t in results["tests"] if t["name"] in corpus.declared_scores(mutant, full)]
        assert all("✗ hidden check" in t["output"] for t in lost), "a lost point must say why"


def test_every_hidden_check_kills_a_wrong_submission(graded):
    killed = set()
    for mutant in MUTANTS:
        if mutant.kind == "wrong":
            killed |= corpus.failed_checks(graded(mutant.name))
    checks = corpus.all_checks(graded("solution"))
    assert len(checks) >= 13
    assert checks - killed == set(), f"hidden checks that catch no mistake: {checks - killed}"


def test_no_failure_message_in_the_corpus_shows_a_magnitude(graded):
    """Messages say where an answer differs, never by how much: no expected value, no distance
    (a decimal number) and, for multiple choice, no key."""
    names = ["solution", *(m.name for m in MUTANTS)]
    every = {name: graded(name) for name in names}  # each graded once, shared with the tests above
    leaks = [f"{name}: {line}" for name, r in every.items() for line in corpus.leaks(r)]
    assert leaks == [], "\n".join(leaks)
    for name, results in every.items():
        for test in results["tests"]:
            if test["name"].startswith("q10") and "✗ hidden check" in test["output"]:
                assert "not the right choice" in test["output"], (name, test["output"])
                assert not re.search(r'["\'][abcd]["\']', test["output"]), (name, test["output"])
