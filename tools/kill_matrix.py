"""Grade the submission corpus and print the kill matrix; exit 1 on any mismatch.

    python tools/kill_matrix.py            # every mutant in tests/corpus/mutants.toml
    python tools/kill_matrix.py NAME ...   # only these
    python tools/kill_matrix.py --question q4_behavior_cloning   # the mutants that target q4

Rows are submissions, columns questions; a cell is the score got, with the expected score after
a slash where they differ. A final line lists hidden checks that kill no mutant (there must be
none; with named mutants, only the checks of the questions they target are judged), and any
failure message showing a magnitude (a decimal number: an expected value or a distance) is
printed as LEAK and fails the run. Needs root (the grader's sandbox user) and a built release
(`make release`).
"""

from __future__ import annotations

import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.corpus import corpus


def matching_questions(prefix: str, questions: list[str]) -> list[str]:
    """The questions ``prefix`` names: a full name or its number (``q4``, which never means q41),
    else the names it begins (``q15_awr`` for ``q15_awr_weights``)."""
    exact = [q for q in questions if prefix in (q, q.split("_")[0])]
    return exact or [q for q in questions if q.startswith(prefix)]


def select(argv: list[str]) -> list[corpus.Mutant]:
    """The named mutants, or with ``--question Q`` those whose declared scores change question Q
    (a full name, its number e.g. q4, or a prefix), or all of them."""
    mutants = corpus.load_mutants()
    if argv[:1] == ["--question"] and len(argv) == 2:
        questions = list(corpus.question_checks())
        named = matching_questions(argv[1], questions)
        if len(named) != 1:
            which = "no question" if not named else f"{len(named)} questions ({', '.join(named)})"
            raise SystemExit(
                f"--question {argv[1]!r} matches {which} of the built autograder: "
                f"{', '.join(questions)}. Rebuilt after adding it (make release)?"
            )
        full = {q.name: q.points for q in corpus._questions()}
        chosen = [m for m in mutants if named[0] in corpus.declared_scores(m, full)]
        valid = [m.name for m in mutants if m.kind == "valid"]
        if valid:
            print(f"skipped {len(valid)} kind = \"valid\" entries (they declare no question; "
                  f"`make kill-matrix` grades them): {', '.join(valid)}")  # fmt: skip
        if not chosen:
            raise SystemExit(
                f"no mutant in {corpus.MUTANTS.name} changes question {named[0]!r}: add one"
            )
        return chosen
    unknown = set(argv) - {m.name for m in mutants}
    if unknown:
        raise SystemExit(f"unknown mutants: {sorted(unknown)}")
    return [m for m in mutants if not argv or m.name in argv]


def main(argv: list[str]) -> int:
    mutants = select(argv)
    t0 = time.perf_counter()
    base = corpus.grade(corpus.solution())
    full = corpus.full_marks(base)
    questions = list(full)
    short = [q.split("_")[0] for q in questions]
    rows, mismatches, killed = [], 0, set()
    got_solution = corpus.question_scores(base)
    rows.append(("solution", "ok" if got_solution == full else "MISMATCH", got_solution, full))
    mismatches += got_solution != full
    # Two at a time, one sandbox user each (the grader kills every process of its user).
    free_uids: queue.Queue[int] = queue.Queue()
    for uid in (61_320, 61_321):
        free_uids.put(uid)

    def grade(mutant: corpus.Mutant) -> dict:
        uid = free_uids.get()
        try:
            return corpus.grade(corpus.apply(corpus.solution(), mutant), uid=uid)
        finally:
            free_uids.put(uid)

    with ThreadPoolExecutor(max_workers=2) as pool:
        graded = list(pool.map(grade, mutants))
    for mutant, results in zip(mutants, graded):
        got, want = corpus.question_scores(results), corpus.expected_scores(mutant, full)
        if mutant.kind == "wrong":
            killed |= corpus.failed_checks(results)
        ok = got == want
        mismatches += not ok
        rows.append((mutant.name, "ok" if ok else "MISMATCH", got, want))
    width = max(len(r[0]) for r in rows)
    print(f"{'submission':<{width}}  {'':8}" + "".join(f"{s:>9}" for s in short))
    for name, status, got, want in rows:
        cells = []
        for q in questions:
            text = f"{got[q]:g}" if got[q] == want[q] else f"{got[q]:g}/{want[q]:g}!"
            cells.append(f"{text:>9}")
        print(f"{name:<{width}}  {status:8}" + "".join(cells))
    # Every check must kill a mutant: judged over the whole corpus, or with --question over the
    # checks of that question. Named mutants are judged by their own rows only.
    judged = corpus.all_checks(base)
    if argv[:1] == ["--question"]:
        per_question = corpus.checks_by_question(base)
        named = matching_questions(argv[1], list(per_question))
        judged = {c for q in named for c in per_question[q]}
    elif argv:
        judged = set()
    unkilled = sorted(judged - killed)
    leaks = [f"{m.name}: {line}" for m, r in zip(mutants, graded) for line in corpus.leaks(r)]
    for leak in leaks:
        print("LEAK", leak)
    print(f"\n{len(rows)} submissions, {mismatches} mismatches, {time.perf_counter() - t0:.0f} s")
    print(f"the solution's grading took {base.get('execution_time', float('nan'))} s")
    # Declared in mutants.toml (public_warns), verified by tests/test_corpus.py without a grader.
    silent = [m.name for m in mutants if m.kind == "wrong" and m.public_warns is False]
    print(f"wrong entries grader.check does not warn about: {len(silent)}", *silent[:8])
    if judged:
        print("hidden checks that kill no mutant:", ", ".join(unkilled) or "none")
    return 1 if mismatches or unkilled or leaks else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
