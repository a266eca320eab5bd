"""The submission corpus: mutants of the solution notebook, graded by the shipped autograder.

Shared by ``tests/test_corpus.py`` (one test per submission) and ``tools/kill_matrix.py``
(prints the submission x question matrix). Grading goes through the real artifact: the
``autograder.zip`` of the release, unzipped, run with ``python -m grading`` as Gradescope would.
"""

from __future__ import annotations

import ast
import copy
import fcntl
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = "offline_rl"
ZIP = ROOT / "autograder" / ASSIGNMENT / "autograder.zip"
SOLUTION = ROOT / "autograder" / ASSIGNMENT / f"{ASSIGNMENT}-solution.ipynb"
MUTANTS = Path(__file__).with_name("mutants.toml")


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str  # "wrong" or "valid"
    why: str
    replace: list[tuple[str, str]] = field(default_factory=list)
    wrong_choice: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    fails: tuple[str, ...] = ()  # the hidden checks it fails (instead of `scores`)
    cascade: str = ""
    public_warns: bool | None = None
    """Wrong entries: whether the student's own grader.check (the public checks of the questions
    it loses points on) fails on it (tests/corpus/public.py verifies it)."""


def load_mutants() -> list[Mutant]:
    data = tomllib.loads(MUTANTS.read_text())
    return [
        Mutant(
            name=m["name"],
            kind=m["kind"],
            why=m["why"],
            replace=[tuple(pair) for pair in m.get("replace", [])],
            wrong_choice=m.get("wrong_choice"),
            scores={k: float(v) for k, v in m.get("scores", {}).items()},
            fails=tuple(m.get("fails", [])),
            cascade=m.get("cascade", ""),
            public_warns=m.get("public_warns"),
        )
        for m in data["mutant"]
    ]


def solution() -> nbformat.NotebookNode:
    return nbformat.read(SOLUTION, as_version=4)


def apply(nb: nbformat.NotebookNode, mutant: Mutant) -> nbformat.NotebookNode:
    """The notebook with the mutant's edits; each edit must match exactly once.

    A new notebook of new cells; outputs and metadata are shared with ``nb`` (read, never
    written: a deep copy of every (mutant, others) made packing take 15 CPU-s)."""
    nb = nbformat.NotebookNode({**nb, "cells": [nbformat.NotebookNode(c) for c in nb.cells]})
    code = [c for c in nb.cells if c.cell_type == "code"]
    for old, new in mutant.replace:
        hits = [c for c in code if old in c.source]
        count = sum(c.source.count(old) for c in hits)
        if count != 1:
            raise AssertionError(
                f"mutant {mutant.name}: {old!r} occurs {count} times in the solution notebook "
                "(must be once); update tests/corpus/mutants.toml to the current master"
            )
        hits[0].source = hits[0].source.replace(old, new)
    if mutant.wrong_choice:
        pattern = re.compile(rf"^{mutant.wrong_choice} = \"([abcd])\"", re.M)
        cell = next(c for c in code if pattern.search(c.source))
        key = pattern.search(cell.source).group(1)
        wrong = next(letter for letter in "abcd" if letter != key)
        cell.source = pattern.sub(f'{mutant.wrong_choice} = "{wrong}"', cell.source)
    return nb


def apply_all(nb: nbformat.NotebookNode, mutants: Sequence[Mutant]) -> nbformat.NotebookNode:
    """The notebook with every mutant's edits (a pack's: they edit different cells)."""
    for mutant in mutants:
        nb = apply(nb, mutant)
    return nb


def declared_questions(mutant: Mutant) -> set[str]:
    """The questions a mutant declares it loses points on (its own and its cascades)."""
    if not mutant.fails:
        return set(mutant.scores)
    return {q for q, checks in question_checks().items() if set(checks) & set(mutant.fails)}


def touched_questions(
    mutant: Mutant,
    nb: nbformat.NotebookNode,
    others: Sequence[Mutant] = (),
    numbered: Sequence[Any] | None = None,
) -> frozenset[str] | None:
    """Every question whose score the mutant may change, in ``nb`` with the ``others``' edits:
    the ones it declares, the ones whose answer cells it edits, and (transitively) the ones whose
    answer cells, before or after any of these edits, use a name the reached cells define.

    None (grade it alone) when no static reading can bound it: it edits a cell of no question;
    an edited cell binds other top-level names than before (a variable or a def that shadows
    another question's function: review rv8); or the edit touches process-wide state (grad
    mode, default dtype, seeds, module attributes), which reaches every later check.
    ``numbered``: ``grading.runner.code_cells(nb)[0]``, if the caller has it already."""
    from grading.runner import code_cells

    base = apply_all(nb, others)
    edited = apply(base, mutant)
    if numbered is None:
        numbered = code_cells(nb)[0]  # the same cells and tags in every mutant
    question_of = {cell.number: cell.question for cell in numbered}
    reached = set(declared_questions(mutant))
    for number, (old, new) in enumerate(zip(base.cells, edited.cells), start=1):
        if old.source == new.source:
            continue
        added = "\n".join(set(new.source.splitlines()) - set(old.source.splitlines()))
        if question_of.get(number) is None or _GLOBAL_STATE.search(added):
            return None
        bound = _bound_names(old.source), _bound_names(new.source)
        if None in bound or bound[0] != bound[1]:
            return None
        reached.add(question_of[number])
    answers = [
        (question_of[c.number], source)
        for c in numbered
        if c.answer and c.question
        for source in {base.cells[c.number - 1].source, edited.cells[c.number - 1].source}
    ]
    while True:  # close over "uses a name a reached question's cells define"
        names = {n for q, src in answers if q in reached for n in _bound_names(src) or ()}
        uses = re.compile(rf"\b({'|'.join(sorted(names))})\b") if names else None
        users = {q for q, src in answers if uses and uses.search(src)}
        if users <= reached:
            return frozenset(reached)
        reached |= users


#: Calls and assignments whose effect outlives the cell and reaches every later check.
_GLOBAL_STATE = re.compile(
    r"\b(set_grad_enabled|set_default_dtype|set_default_device|seterr|set_printoptions|"
    r"manual_seed|set_num_threads|use_deterministic_algorithms|setattr|globals|"
    r"warnings|builtins|environ)\b|\bseed\s*\("
    r"|^\s*(np|torch|F|nn|random|os|sys)(\.\w+)+\s*=(?!=)",
    re.M,
)


@functools.lru_cache(maxsize=4096)
def _bound_names(source: str) -> frozenset[str] | None:
    """The top-level names a cell binds (defs, classes, assignments, imports, loop and with
    targets); None if it does not parse or declares a name global."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            inner = node
        else:
            inner = None
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Global, ast.Nonlocal)):
                return None
            if inner is not None:
                continue
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                names.add(sub.id)
            elif isinstance(sub, ast.alias):
                names.add((sub.asname or sub.name).split(".")[0])
            elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                names.add(sub.name)
    return frozenset(names)


def _lost(mutant: Mutant, full: dict[str, float]) -> set[str]:
    return {q for q, score in declared_scores(mutant, full).items() if score < full[q]}


Touched = Callable[[Mutant, Sequence[Mutant]], "frozenset[str] | None"]


def memo_touched(nb: nbformat.NotebookNode) -> Touched:
    """``touched_questions`` on ``nb``, each (mutant, others) worked out once."""
    from grading.runner import code_cells

    cache: dict[tuple[str, tuple[str, ...]], frozenset[str] | None] = {}
    numbered = code_cells(nb)[0]

    def touched(mutant: Mutant, others: Sequence[Mutant] = ()) -> frozenset[str] | None:
        key = (mutant.name, tuple(sorted(o.name for o in others)))
        if key not in cache:
            cache[key] = touched_questions(mutant, nb, others, numbered)
        return cache[key]

    return touched


def leak_pairs(
    packs: Sequence[Sequence[Mutant]], touched: Touched, full: dict[str, float]
) -> set[tuple[str, str]]:
    """The (X, Y) pairs the gradings of ``packs`` could show a leak between: some member loses
    points on X while question Y, checked by a member that expects points there, must keep them.
    (A grader bug "losing X costs Y" passes unseen where no grading covers the pair: review rv8.)"""
    pairs = set()
    for pack in packs:
        lost = set().union(*(_lost(m, full) for m in pack if m.kind == "wrong"))
        for member in pack:
            others = [m for m in pack if m is not member]
            theirs = set().union(*(touched(o, [m for m in pack if m is not o]) or set()
                                   for o in others))  # fmt: skip
            expect = expected_scores(member, full)
            checked = {y for y in full if y not in theirs and expect[y] > 0}
            pairs |= {(x, y) for x in lost for y in checked if x != y}
    return pairs


def packs(mutants: Sequence[Mutant], nb: nbformat.NotebookNode) -> list[tuple[Mutant, ...]]:
    """The corpus in packs that one grading each can check: within a pack no two mutants touch
    the same question (``touched_questions``, each read with the others' edits in place), so
    every question's score is that of the one member that can change it, or full marks. Valid
    variants are packed only with each other (a wrong member's lost points could hide a valid
    one wrongly penalised). Then mutants are graded alone until the packs cover every leak pair
    that grading each alone covers (``leak_pairs``). A grading costs ~6 CPU-s, most of it the
    kernel's start and imports: packs cut the corpus's gradings by more than half.

    Sound because questions are graded independently (each hidden check runs alone on its own
    inputs; tests/test_bad_submissions.py proves several mistakes cost only their questions),
    and a mutant reaches another question only through names its cells define, or through
    process-wide state (graded alone). First fit, in the file's order: the same packs on every
    run. ``make kill-matrix`` grades every mutant alone."""
    touched = memo_touched(nb)
    groups: list[list[Mutant]] = []
    alone: list[tuple[Mutant, ...]] = []
    for mutant in mutants:
        if touched(mutant) is None:
            alone.append((mutant,))
            continue
        for members in groups:
            if members[0].kind == mutant.kind and disjoint([*members, mutant], touched):
                members.append(mutant)
                break
        else:
            groups.append([mutant])
    result = [tuple(g) for g in groups] + alone
    full = {q.name: q.points for q in _questions()}
    wanted = leak_pairs([(m,) for m in mutants], touched, full)
    while missing := sorted(wanted - leak_pairs(result, touched, full)):
        x, y = missing[0]
        pick = next(m for m in mutants if x in _lost(m, full) and expected_scores(m, full)[y] > 0)
        result = [tuple(m for m in p if m is not pick) for p in result]
        result = [p for p in result if p] + [(pick,)]
    return result


def disjoint(members: Sequence[Mutant], touched: Touched) -> bool:
    """Whether no two members touch the same question, each read with the others' edits."""
    seen: set[str] = set()
    for member in members:
        others = [m for m in members if m is not member]
        try:
            reach = touched(member, others)
        except AssertionError:  # an edit no longer matches once the others are applied
            return False
        if reach is None or seen & reach:
            return False
        seen |= reach
    return True


def grade(
    nb: nbformat.NotebookNode | None,
    *,
    files: dict[str, bytes] | None = None,
    uid: int | None = None,
    extra_args: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Grade a notebook (or raw submission files) with the release's autograder.zip; ``uid``
    forces the sandbox uid (runs forcing the same one wait for each other)."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        src, sub, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        with zipfile.ZipFile(ZIP) as zf:
            zf.extractall(src)
        sub.mkdir()
        if nb is not None:
            nbformat.write(nb, sub / f"{ASSIGNMENT}.ipynb")
        for name, data in (files or {}).items():
            (sub / name).parent.mkdir(parents=True, exist_ok=True)
            (sub / name).write_bytes(data)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(env_extra or {})
        cmd = [sys.executable, "-m", "grading", str(src), str(sub), str(res)]
        if uid is not None:  # default: the grader picks a fresh uid for the run
            cmd += ["--uid", str(uid)]
        proc = subprocess.run(
            [*cmd, *extra_args], cwd=src, env=env, capture_output=True, text=True, timeout=900
        )
        path = res / "results.json"
        if not path.exists():
            raise AssertionError(f"no results.json; grader said:\n{proc.stdout}\n{proc.stderr}")
        results = json.loads(path.read_text())
        if results["output"].startswith("The autograder itself failed"):
            # A grader bug, never an expected outcome here: fail with its traceback.
            raise AssertionError(f"the grader crashed; it said:\n{proc.stderr[-4000:]}")
        return results


def grade_once(
    cache: Path,
    nb: nbformat.NotebookNode | None,
    *,
    files: dict[str, bytes] | None = None,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``grade``, but a submission graded before in this test run (``cache`` is the run's own
    folder, shared by its xdist workers) is not graded again: the corpus test, the bad-submission
    tests and anything else asking for the same submission share one grading. A worker that asks
    while another grades it waits for that result."""
    key = hashlib.sha256(ZIP.read_bytes())
    key.update(nbformat.writes(nb).encode() if nb is not None else b"<no notebook>")
    for name, data in sorted((files or {}).items()):
        key.update(f"\0{name}\0".encode() + hashlib.sha256(data).digest())
    key.update(json.dumps(extra_args).encode())
    stem = cache / key.hexdigest()[:24]
    with open(stem.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = stem.with_suffix(".json")
        if done.exists():
            return json.loads(done.read_text())
        results = grade(nb, files=files, extra_args=extra_args)
        done.write_text(json.dumps(results))
        return results


def _questions() -> list:
    """The autograder's questions (points, hidden checks), from its otter test files (read once
    per build of the zip)."""
    stat = ZIP.stat()
    return _questions_of(ZIP, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _questions_of(zip_path: Path, _mtime_ns: int, _size: int) -> list:
    from grading.runner import load_questions

    with tempfile.TemporaryDirectory(prefix="points-") as tmp, zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if name.startswith("tests/"):
                zf.extract(name, tmp)
        return load_questions(Path(tmp, "tests"))


def total_points() -> float:
    """The autograder's total, from its otter test files (what Gradescope shows as the maximum)."""
    return sum(q.points for q in _questions())


def question_checks() -> dict[str, tuple[str, ...]]:
    """Question -> its hidden checks, in the autograder's order."""
    return {q.name: q.checks for q in _questions()}


def scores_from_fails(fails: tuple[str, ...], full: dict[str, float]) -> dict[str, float]:
    """The scores a submission failing exactly these hidden checks gets: each question's points
    split evenly over its checks, rounded as the grader rounds."""
    checks = question_checks()
    known = {c for cs in checks.values() for c in cs}
    if set(fails) - known:
        raise AssertionError(f"unknown hidden checks {sorted(set(fails) - known)}")
    scores = {}
    for question, names in checks.items():
        lost = sum(c in fails for c in names)
        if lost:
            scores[question] = round(full[question] * (len(names) - lost) / len(names), 6)
    return scores


def question_scores(results: dict[str, Any]) -> dict[str, float]:
    return {t["name"]: float(t["score"]) for t in results["tests"] if t.get("max_score", 0) > 0}


def full_marks(results: dict[str, Any]) -> dict[str, float]:
    return {t["name"]: float(t["max_score"]) for t in results["tests"] if t.get("max_score", 0) > 0}


def declared_scores(mutant: Mutant, full: dict[str, float]) -> dict[str, float]:
    """The questions a mutant loses points on, with the score it must get there: its `scores`,
    or what failing its `fails` checks gives."""
    if mutant.fails:
        return scores_from_fails(mutant.fails, full)
    return dict(mutant.scores)


def expected_scores(mutant: Mutant, full: dict[str, float]) -> dict[str, float]:
    declared = declared_scores(mutant, full)
    unknown = set(declared) - set(full)
    if unknown:
        raise AssertionError(f"mutant {mutant.name}: unknown questions {sorted(unknown)}")
    return {q: declared.get(q, points) for q, points in full.items()}


def failed_checks(results: dict[str, Any]) -> set[str]:
    """Hidden checks that failed, read from the per-question output lines."""
    found = set()
    for test in results["tests"]:
        found |= set(re.findall(r"^✗ hidden check (\w+):", test.get("output", ""), re.M))
    return found


def all_checks(results: dict[str, Any]) -> set[str]:
    found = set()
    for test in results["tests"]:
        found |= set(re.findall(r"^[✓✗] hidden check (\w+):", test.get("output", ""), re.M))
    return found


def checks_by_question(results: dict[str, Any]) -> dict[str, set[str]]:
    """Question -> the hidden checks it reports."""
    return {
        t["name"]: set(re.findall(r"^[✓✗] hidden check (\w+):", t.get("output", ""), re.M))
        for t in results["tests"]
    }


#: A decimal number: failure messages must show none (no expected value, no distance to it).
_DECIMAL = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+|\d+(\.\d*)?[eE][-+]?\d+)(?![\w.])")


def leaks(results: dict[str, Any]) -> list[str]:
    """Failure lines of hidden checks that show a magnitude (the hint lines are the
    instructor's own text and are not scanned)."""
    found = []
    for test in results["tests"]:
        for line in test.get("output", "").splitlines():
            if line.startswith("✗ hidden check") and _DECIMAL.search(line.split(": ", 1)[-1]):
                found.append(f"{test['name']}: {line}")
    return found


STUDENT = ROOT / "student_release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"


def student() -> nbformat.NotebookNode:
    """The untouched student notebook (nothing implemented)."""
    return nbformat.read(STUDENT, as_version=4)


def insert_cell(
    nb: nbformat.NotebookNode, source: str, after: str | None = None
) -> nbformat.NotebookNode:
    """A copy of ``nb`` with a code cell after the first cell containing ``after`` (default: the
    first code cell, i.e. right after otter's init cell)."""
    nb = copy.deepcopy(nb)
    index = next(
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (after is None or after in c.source)
    )
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    return nb


def grade_plain_otter(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """Grade with otter's own in-kernel runner (``otter run``): the baseline the attacks fool."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    import build_release  # otter's command line, as the release build runs it

    with tempfile.TemporaryDirectory(prefix="plain-otter-") as tmp:
        path = Path(tmp, f"{ASSIGNMENT}.ipynb")
        nbformat.write(nb, path)
        out = Path(tmp, "out")
        out.mkdir()
        cmd = [sys.executable, "-c", build_release.OTTER_CLI, "run", "-a", str(ZIP)]
        cmd += ["-o", str(out), str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        results = out / "results.json"
        if not results.exists():
            raise AssertionError(f"otter run left no results.json:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(results.read_text())


def otter_question_scores(results: dict[str, Any]) -> dict[str, float]:
    return {
        t["name"]: float(t["score"])
        for t in results["tests"]
        if t.get("max_score") and t["name"] != "Public Tests"
    }
