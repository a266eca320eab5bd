"""The submission corpus (tests/corpus/mutants.toml) graded by the release's autograder.

Every wrong submission must get exactly its declared score on each question (full marks on the
others); every valid variant full marks; every hidden check must fail at least one wrong
submission. ``make corpus`` runs this file alone; ``python tools/kill_matrix.py`` grades each
submission on its own and prints the matrix.

Here the corpus is graded in packs (``corpus.packs``): mutants that touch different questions
share one notebook and one grading, and each mutant's test reads its questions from its pack's
results (29 gradings instead of 62: a grading is ~6 CPU-s, most of it the kernel's start).
Each pack is graded once per test run (``grade_once``), by whichever pytest-xdist worker gets
one of its tests first; the tests that need them all reuse those gradings.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import require_root
from tests.corpus import corpus, public

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

MUTANTS = corpus.load_mutants()


@pytest.fixture(scope="session")
def pack_list() -> list[tuple[corpus.Mutant, ...]]:
    """The corpus's packs, one grading each."""
    return corpus.packs(MUTANTS, corpus.solution())


@pytest.fixture(scope="session")
def packs(pack_list) -> dict[str, tuple[corpus.Mutant, ...]]:
    """Mutant name -> the pack it is graded in."""
    return {m.name: pack for pack in pack_list for m in pack}


@pytest.fixture
def graded(grade_once, packs):
    """name -> results of the grading that holds it ("solution", or a mutant's pack), grading
    on first use."""
    require_root()

    def get(name: str) -> dict:
        members = () if name == "solution" else packs[name]
        return grade_once(corpus.apply_all(corpus.solution(), members))

    return get


def test_packs_hold_every_mutant_once_and_share_no_question(packs, pack_list):
    """What makes a pack's grading stand for each member's: no two members touch a question,
    each read with the others' edits in place."""
    nb = corpus.solution()
    assert sorted(packs) == sorted(m.name for m in MUTANTS)
    for pack in pack_list:
        touched = [corpus.touched_questions(m, nb, _others(pack, m)) for m in pack]
        if None in touched:
            assert len(pack) == 1, f"{[m.name for m in pack]}: one cannot be bounded"
            continue
        shared = {q for i, a in enumerate(touched) for b in touched[i + 1 :] for q in a & b}
        assert not shared, f"{[m.name for m in pack]} share {sorted(shared)}"
    assert len(pack_list) < len(MUTANTS) / 2, "the packing saves too little"


def test_packs_cover_every_leak_pair_that_grading_each_alone_covers(pack_list):
    """A grader bug "losing points on X costs points on Y" shows wherever some grading loses X
    while Y must keep points: the packs must leave no such pair unseen (review rv8: packed
    q10-q12 mutants zeroed each other, and a q10 leak into q11/q12 passed)."""
    nb = corpus.solution()
    full = {q.name: q.points for q in corpus._questions()}
    touched = corpus.memo_touched(nb)
    alone = corpus.leak_pairs([(m,) for m in MUTANTS], touched, full)
    packed = corpus.leak_pairs(pack_list, touched, full)
    assert len(alone) > 100
    assert alone - packed == set(), f"leaks the packs cannot see: {sorted(alone - packed)}"


def _probe(name: str, old: str, new: str, scores: dict[str, float]) -> corpus.Mutant:
    return corpus.Mutant(name=name, kind="wrong", why="probe", replace=[(old, new)],
                         scores=scores)  # fmt: skip


Q12 = "q12_answer = float(np.log(4))  # SOLUTION"
#: review rv8's probes: each reaches a question no call in the original notebook leads to.
SHADOW = _probe("shadow", Q12, "cql_penalty = 0.0\nq12_answer = cql_penalty",
                {"q12_constant_q_penalty": 0.0})  # fmt: skip
REDEFINE = _probe("redefine", Q12, Q12 + "\ndef td_target(*args):\n    return 0.0",
                  {"q12_constant_q_penalty": 0.0})  # fmt: skip
GRAD_MODE = _probe(
    "grad_mode",
    "    return (rewards + gamma * not_done * max_next_q).detach()",
    "    torch.set_grad_enabled(False)\n    return rewards + gamma * not_done * max_next_q",
    {"q5_cql": 0.0},
)
NEW_CALL = _probe("new_call", Q12, "q12_answer = float(np.log(4)) + 0 * float(td_target("
                  "torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.9)[0])",
                  {})  # fmt: skip


@pytest.mark.parametrize("probe", [SHADOW, REDEFINE, GRAD_MODE], ids=lambda m: m.name)
def test_a_mutant_whose_reach_no_call_bounds_is_graded_alone(probe):
    """A top-level name bound anew (shadowing another question's function) or process-wide
    state changed: the reach cannot be read from the calls, so the mutant gets its own grading."""
    nb = corpus.solution()
    assert corpus.touched_questions(probe, nb) is None
    packs = corpus.packs([probe, *MUTANTS[:6]], nb)
    assert (probe,) in packs


def test_a_call_a_pack_mate_adds_extends_the_callees_reach():
    """An edit that calls another question's function makes that function's mistakes reach
    the edited question: the two are never packed together."""
    nb = corpus.solution()
    no_done = next(m for m in MUTANTS if m.name == "td_target_no_done_mask")
    assert "q12_constant_q_penalty" not in corpus.touched_questions(no_done, nb)
    assert "q12_constant_q_penalty" in corpus.touched_questions(no_done, nb, [NEW_CALL])
    packs = corpus.packs([no_done, NEW_CALL], nb)
    assert len(packs) == 2, [[m.name for m in p] for p in packs]


def _others(pack: tuple[corpus.Mutant, ...], member: corpus.Mutant) -> list[corpus.Mutant]:
    return [m for m in pack if m is not member]


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
def test_submission_gets_its_declared_score(graded, packs, mutant):
    results = graded(mutant.name)
    full = corpus.full_marks(graded("solution"))
    got, want = corpus.question_scores(results), corpus.expected_scores(mutant, full)
    nb = corpus.solution()
    pack = packs[mutant.name]
    others = [m for m in pack if m is not mutant]
    # Its own questions, and those no member of the pack touches (full marks, unless it costs
    # points it does not declare). The others' questions are theirs to check.
    theirs = set().union(
        *(corpus.touched_questions(m, nb, _others(pack, m)) or set() for m in others)
    )
    mine = [q for q in full if q not in theirs]
    diff = {q: f"got {got[q]:g}, expected {want[q]:g}" for q in mine if got.get(q) != want[q]}
    together = f" (graded in one notebook with {[m.name for m in others]})" if others else ""
    assert not diff, f"{mutant.name} ({mutant.why}): {diff}{together}"
    if mutant.kind == "wrong":
        lost = [t for t in results["tests"] if t["name"] in corpus.declared_scores(mutant, full)]
        assert all("✗ hidden check" in t["output"] for t in lost), "a lost point must say why"


def test_every_hidden_check_kills_a_wrong_submission(graded):
    killed = set()
    for mutant in MUTANTS:
        if mutant.kind == "wrong":  # the checks it fails on its own questions, not its pack's
            own = corpus.declared_questions(mutant)
            results = graded(mutant.name)
            by_question = {t["name"]: {"tests": [t]} for t in results["tests"]}
            for question in own:
                killed |= corpus.failed_checks(by_question[question])
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


WRONG = [m for m in MUTANTS if m.kind == "wrong"]


def test_every_wrong_entry_declares_whether_the_public_checks_warn():
    missing = [m.name for m in WRONG if m.public_warns is None]
    assert missing == [], f"declare public_warns = true/false in mutants.toml for {missing}"


@pytest.fixture(scope="module")
def student_notebook():
    if not corpus.STUDENT.exists():
        pytest.fail("no student notebook: run `make release` first")
    return corpus.student()


@pytest.mark.parametrize("mutant", WRONG, ids=[m.name for m in WRONG])
def test_public_checks_warn_as_declared(student_notebook, mutant):
    """The student's own grader.check on the questions the entry loses points on, run in this
    process on the entry's definitions (our code, so no sandbox; see tests/corpus/public.py)."""
    failures = public.public_failures(
        corpus.apply(corpus.solution(), mutant), student_notebook, list(mutant.scores)
    )
    shown = {q: [m.splitlines()[-1] for m in ms] for q, ms in failures.items() if ms}
    assert public.warns(failures) == mutant.public_warns, (
        f"{mutant.name} ({mutant.why}): public_warns = {mutant.public_warns} declared, "
        f"but grader.check {'fails: ' + str(shown) if shown else 'passes'}"
    )


def test_public_checks_pass_the_solution(student_notebook):
    questions = list(student_notebook.metadata["otter"]["tests"])
    failures = public.public_failures(corpus.solution(), student_notebook, questions)
    assert not public.warns(failures), failures


VALID = [m for m in MUTANTS if m.kind == "valid"]


@pytest.mark.parametrize("mutant", VALID, ids=[m.name for m in VALID])
def test_public_checks_pass_every_valid_variant(student_notebook, mutant):
    """A right answer written another way (float64, no_grad, a broadcast) must not be told it is
    wrong by the student's own checks: it gets full marks from the grader."""
    questions = list(student_notebook.metadata["otter"]["tests"])
    failures = public.public_failures(corpus.apply(corpus.solution(), mutant), student_notebook,
                                      questions)  # fmt: skip
    shown = {q: [m.splitlines()[-1] for m in ms] for q, ms in failures.items() if ms}
    assert not public.warns(failures), f"{mutant.name} ({mutant.why}): grader.check fails {shown}"


@pytest.mark.parametrize(("name", "value"), [("q10_answer", "'B'"), ("q11_answer", "'35'")])
def test_a_wrong_format_is_quoted_whole_in_the_message(student_notebook, name, value):
    """Otter strips quotes from both ends of a failure message (``str(err).strip("'")``): a
    message ending in ``got 'B'`` reached the student as ``got 'B``. The value must stay whole."""
    nb = corpus.solution()
    cell = next(c for c in nb.cells if c.cell_type == "code" and f"\n{name} = " in f"\n{c.source}")
    cell.source = re.sub(rf"(?m)^{name} = .*$", f"{name} = {value}", cell.source)
    question = next(q for q in student_notebook.metadata["otter"]["tests"]
                    if q.startswith(name.split("_")[0] + "_"))  # fmt: skip
    failures = public.public_failures(nb, student_notebook, [question])[question]
    assert failures, f"{name} = {value} passed the format check"
    assert all(value in message for message in failures), failures


#: The student's mistakes whose public-check message once misled (student report, session 10,
#: section 2): (what, question, edits of the solution, a phrase every failure of the question
#: must show). Each is a wrong answer the grader also penalises; here only the message is pinned.
MISLEADING = [
    ("q2_max_over_the_batch", "q2_td_target",
     [("next_q_values.max(dim=1)", "next_q_values.max(dim=0)")],
     "which dimension of next_q_values"),
    ("q2_returns_numpy", "q2_td_target",
     [("    return (rewards + gamma * not_done * max_next_q).detach()",
       "    return (rewards + gamma * not_done * max_next_q).detach().numpy()")],
     "must return a torch tensor"),
    ("q4_update_returns_tensor", "q4_behavior_cloning",
     [("    optimizer.step()\n    return float(loss.item())",
       "    optimizer.step()\n    return loss")],
     "as a float"),
    ("q5_alpha_inside_info_penalty", "q5_cql",
     [('    penalty = cql_penalty(q_values, batch["actions"])\n'
       '    total = bellman + alpha * penalty',
       '    penalty = alpha * cql_penalty(q_values, batch["actions"])\n'
       '    total = bellman + penalty')],
     "it must be the penalty itself, without alpha"),
    ("q5_penalty_on_next_observations", "q5_cql",
     [('    penalty = cql_penalty(q_values, batch["actions"])',
       '    penalty = cql_penalty(q_net(batch["next_observations"]), batch["actions"])')],
     "NEXT observations"),
    ("q6_strict_threshold", "q6_bcq",
     [("np.where(ratio >= threshold, q, -np.inf)", "np.where(ratio > threshold, q, -np.inf)")],
     "is your comparison >="),
    ("q7_gamma_typed_in", "q7_alpha",
     [("lay.n_states, lay.n_actions, lay.gamma, alpha=alpha)\n        returns",
       "lay.n_states, lay.n_actions, 0.99, alpha=alpha)\n        returns")],
     "the layout's own gamma"),
    # Student11 (session 10): n25, n27, n12 and the borderline variant q4_v4.
    ("q3_loop_one_short", "q3_offline_q",
     [("    for _ in range(n_iters):", "    for _ in range(1, n_iters):")],
     "no update happened"),
    ("q2_tilde_on_float_terminals", "q2_td_target",
     [("not_done = 1.0 - terminals.to(rewards.dtype)",
       "not_done = (~terminals).to(rewards.dtype)")],
     "terminals may be 0/1 floats"),
    ("q4_softmax_twice", "q4_behavior_cloning",
     [("    log_probs = F.log_softmax(logits, dim=1)\n"
       "    return -log_probs.gather(1, actions.unsqueeze(1)).squeeze(1).mean()",
       "    return F.cross_entropy(F.softmax(logits, dim=1), actions)")],
     "applies log_softmax itself"),
    ("q4_zero_grad_after_step_only", "q4_behavior_cloning",
     [("    optimizer.zero_grad()\n    loss.backward()\n    optimizer.step()\n",
       "    loss.backward()\n    optimizer.step()\n    optimizer.zero_grad()\n")],
     "may arrive holding gradients from elsewhere"),
    # Student11 n09 (scored full marks in session 10: every shipped layout has gamma 0.9).
    ("q9_gamma_typed_in", "q9_stitching",
     [("lay.n_states, lay.n_actions, lay.gamma, alpha=0.0)\n    cql_q",
       "lay.n_states, lay.n_actions, 0.9, alpha=0.0)\n    cql_q")],
     "the discount of the layout it is given"),
    # Review s11b (session 11): w9_06 met a raw ValueError of the package, w4_08 passed.
    ("q9_rollout_on_the_stitch_layout", "q9_stitching",
     [('"bc_return": planning.rollout_return(layout_name, ',
       '"bc_return": planning.rollout_return("stitch", ')],
     "every rollout use the layout that layout_name names"),
    ("q4_own_optimizer", "q4_behavior_cloning",
     [("    optimizer.zero_grad()\n    loss.backward()",
       "    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)\n"
       "    optimizer.zero_grad()\n    loss.backward()")],
     "not one of your own"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "question", "edits", "phrase"), MISLEADING,
                         ids=[m[0] for m in MISLEADING])  # fmt: skip
def test_public_message_names_the_mistake(student_notebook, what, question, edits, phrase):
    """Each failure the student's grader.check shows for the mistake says what is wrong (not a
    raw torch error, not another mistake's blame), and the check itself raises no warning (a
    stray UserWarning showed up above the message, attributed to an unrelated notebook line)."""
    import warnings

    import torch

    mutant = corpus.Mutant(name=what, kind="wrong", why=what, replace=edits)
    warn_always = torch.is_warn_always_enabled()
    # torch warns once per process (float() of a tensor that requires grad): every time, here.
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            failures = public.public_failures(corpus.apply(corpus.solution(), mutant),
                                              student_notebook, [question])[question]  # fmt: skip
    finally:
        torch.set_warn_always(warn_always)
    last_lines = [m.splitlines()[-1] for m in failures]
    assert failures, f"{what}: grader.check('{question}') passes this wrong answer"
    assert all(phrase in m for m in failures), (
        f"{what}: expected {phrase!r} in every failure, got {last_lines}"
    )
    assert [str(w.message) for w in caught] == [], f"{what}: the check warned"
