"""The submission corpus (tests/corpus/mutants.toml) graded by the release's autograder.

Every wrong submission must get exactly its declared score on each question (full marks on the
others); every valid variant full marks; every hidden check must fail at least one wrong
submission. ``make corpus`` runs this file alone; ``python tools/kill_matrix.py`` prints the
matrix. Submissions are graded two at a time (two sandbox users), as CI has two cores.
"""

from __future__ import annotations

import queue
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import require_root
from tests.corpus import corpus

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

MUTANTS = corpus.load_mutants()


@pytest.fixture(scope="module")
def graded() -> dict[str, dict]:
    require_root()
    jobs = [("solution", None), *[(m.name, m) for m in MUTANTS]]

    # One sandbox user per concurrent run: the grader kills every process of its user at the end.
    free_uids: queue.Queue[int] = queue.Queue()
    for uid in (61_300, 61_301):
        free_uids.put(uid)

    def run(job: tuple) -> tuple[str, dict]:
        name, mutant = job
        nb = corpus.solution() if mutant is None else corpus.apply(corpus.solution(), mutant)
        uid = free_uids.get()
        try:
            return name, corpus.grade(nb, uid=uid)
        finally:
            free_uids.put(uid)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, jobs))


def test_corpus_is_big_enough():
    wrong = [m for m in MUTANTS if m.kind == "wrong"]
    valid = [m for m in MUTANTS if m.kind == "valid"]
    assert len(wrong) >= 15 and len(valid) >= 5, (len(wrong), len(valid))
    assert all(m.scores for m in wrong), "a wrong submission must declare the points it loses"
    assert not any(m.scores for m in valid), "valid variants get full marks: no scores to declare"


def test_solution_gets_full_marks(graded):
    results = graded["solution"]
    assert corpus.question_scores(results) == corpus.full_marks(results)
    assert results["score"] == sum(corpus.full_marks(results).values())


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_submission_gets_its_declared_score(graded, mutant):
    results = graded[mutant.name]
    full = corpus.full_marks(graded["solution"])
    got, want = corpus.question_scores(results), corpus.expected_scores(mutant, full)
    diff = {q: f"got {got[q]:g}, expected {want[q]:g}" for q in full if got.get(q) != want[q]}
    assert not diff, f"{mutant.name} ({mutant.why}): {diff}"
    if mutant.kind == "wrong":
        lost = [t for t in results["tests"] if t["name"] in mutant.scores]
        assert all("✗ hidden check" in t["output"] for t in lost), "a lost point must say why"


def test_every_hidden_check_kills_a_wrong_submission(graded):
    killed = set()
    for mutant in MUTANTS:
        if mutant.kind == "wrong":
            killed |= corpus.failed_checks(graded[mutant.name])
    checks = corpus.all_checks(graded["solution"])
    assert len(checks) >= 13
    assert checks - killed == set(), f"hidden checks that catch no mistake: {checks - killed}"


def test_no_failure_message_in_the_corpus_shows_a_magnitude(graded):
    """Messages say where an answer differs, never by how much: no expected value, no distance
    (a decimal number) and, for multiple choice, no key."""
    leaks = [f"{name}: {line}" for name, r in graded.items() for line in corpus.leaks(r)]
    assert leaks == [], "\n".join(leaks)
    for name, results in graded.items():
        for test in results["tests"]:
            if test["name"].startswith(("q10", "q11")) and "✗ hidden check" in test["output"]:
                assert "not the right choice" in test["output"], (name, test["output"])
                assert not re.search(r'["\'][abcd]["\']', test["output"]), (name, test["output"])
