"""``python -m grading batch`` / ``merge`` end to end on a generated class (issue 21).

The class is graded ONCE (``--jobs 2``); every other check reuses those gradings: the resumed run
grades nothing, ``--force`` regrades a two-submission subset, the shards are cut from the graded
folder by resuming, and the report is opened in headless chromium. Expected scores come from the
corpus (``tests/corpus/mutants.toml``) and the solution's own full marks, never from this file.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT, require_root
from tests.corpus import attacks, corpus

# One worker runs the module: ``--dist loadgroup`` otherwise hands its tests to both workers, and
# each builds the module-scoped ``graded_class`` (the class graded twice: 148 s and 83 s).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.grading,
    pytest.mark.early,
    pytest.mark.xdist_group("batch"),
]

#: Six wrong mutants over different questions (one whose mistake cascades into q5), in two
#: submissions of three: within one, no two touch the same question (``corpus.disjoint``), so
#: its row must hold each member's declared scores. Two gradings instead of six (~25 CPU-s).
PACKS = [
    ("cql_max_not_logsumexp", "bc_summed", "bcq_ratio_of_total"),
    ("td_target_no_done_mask", "coverage_drops_repeats", "q10_wrong_choice"),
]
VALID_IN_ZIP = "valid_cross_entropy"
CLASHING = "solution!"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = ROOT / "build" / "batch-report.png"
METADATA = """\
submission_9001:
  :submitters:
  - :name: Ada Lovelace
    :sid: '9001'
    :email: ada@example.edu
  :created_at: 2026-11-30 12:00:00.000000000 -08:00
  :score: !ruby/object:BigDecimal 18:0.35e2
submission_9002:
  :submitters:
  - :name: Alan Turing
    :sid: '9002'
    :email: alan@example.edu
  - :name: Grace Hopper
    :sid: '9003'
    :email: grace@example.edu
  :created_at: 2026-11-30 13:00:00.000000000 -08:00
"""


def _write(nb: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _make_class(folder: Path) -> dict[str, dict[str, float] | None]:
    """Write the class into ``folder``; return submission id -> expected question scores
    (None: must not be graded, i.e. the corrupt file)."""
    by_name = {m.name: m for m in corpus.load_mutants()}
    solution, blank = corpus.solution(), corpus.student()
    expect: dict[str, dict[str, float] | None] = {}
    _write(solution, folder / "solution.ipynb")
    shutil.copyfile(folder / "solution.ipynb", folder / "solution_again.ipynb")  # duplicate
    expect["solution"] = expect["solution_again"] = {}
    # The blank notebook under a name that is "solution" once made file-system safe, and that
    # sorts before "solution.ipynb" (rt9 batch-id-swap): the solution keeps the id "solution".
    _write(blank, folder / f"{CLASHING}.ipynb")
    expect["solution-2"] = {"*": 0.0}
    touched = corpus.memo_touched(solution)
    for names in PACKS:
        pack = [by_name[name] for name in names]
        assert corpus.disjoint(pack, touched), f"{names} touch a common question: re-pack"
        _write(corpus.apply_all(solution, pack), folder / f"{_pack_id(names)}.ipynb")
        expect[_pack_id(names)] = {q: s for m in pack for q, s in m.scores.items()}
    (folder / "corrupt.ipynb").write_text('{"cells": [ {"cell_type": "code", "sour')
    expect["corrupt"] = None
    buffer = io.BytesIO()  # what the notebook's export cell writes: a zip holding the notebook
    with zipfile.ZipFile(buffer, "w") as zf:
        nb = corpus.apply(solution, by_name[VALID_IN_ZIP])
        zf.writestr("offline_rl.ipynb", nbformat.writes(nb))
    (folder / "offline_rl_submission.zip").write_bytes(buffer.getvalue())
    expect["offline_rl_submission"] = {}
    # Gradescope's "Export Submissions" layout, mixed into the same folder.
    _write(_answer_q13(solution, ADA), folder / "submission_9001" / "offline_rl.ipynb")
    expect["submission_9001"] = {}
    _write(corpus.apply(solution, by_name["bc_summed"]), folder / "submission_9002" / "x.ipynb")
    expect["submission_9002"] = dict(by_name["bc_summed"].scores)
    (folder / "submission_metadata.yml").write_text(METADATA)
    # Two hostile submissions (tests/corpus/attacks.py): on a blank notebook they must score 0.
    _write(
        corpus.insert_cell(blank, attacks.ATTACKS["monkeypatch_otter"]), folder / "h_otter.ipynb"
    )
    forged = corpus.student()
    for cell in attacks.FORGE_RESULTS:
        forged.cells.append(nbformat.v4.new_code_cell(cell))
    _write(forged, folder / "h_forge_results.ipynb")
    expect["h_otter"] = expect["h_forge_results"] = {"*": 0.0}
    return expect


def _pack_id(names: tuple[str, ...]) -> str:
    return "m_" + "__".join(names)


ADA = "Ada's answer: cloning suffices when the data come from one consistent expert."


def _answer_q13(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose Question 13 answer cell (free text, graded by hand) says ``text``."""
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    prompt = next(i for i, c in enumerate(nb.cells) if "### Question 13" in c.source)
    answer = next(c for c in nb.cells[prompt:] if "otter_answer_cell" in c.metadata.get("tags", []))
    answer.source = text
    return nb


def _batch(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grading", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _rows(path: Path, drop: tuple[str, ...] = ("seconds",)) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {
            r["submission"]: {k: v for k, v in r.items() if k not in drop}
            for r in csv.DictReader(f)
        }


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """The class, graded once with --jobs 2: (submissions folder, OUT, expected, stdout)."""
    require_root()
    tmp = tmp_path_factory.mktemp("batch")
    subs, out = tmp / "subs", tmp / "out"
    expect = _make_class(subs)
    before = {p: p.read_bytes() for p in subs.rglob("*") if p.is_file()}
    proc = _batch("batch", corpus.ZIP, subs, out, "--jobs", "2", "--no-progress")
    after = {p: p.read_bytes() for p in subs.rglob("*") if p.is_file()}
    assert after == before, "batch grading changed the originals"
    return subs, out, expect, proc.stdout


def test_grades_match_the_corpus(graded_class):
    _, out, expect, _ = graded_class
    rows = _rows(out / "grades.csv")
    assert set(rows) == set(expect), sorted(set(rows) ^ set(expect))
    full = {q: float(rows["solution"][q]) for q in corpus.full_marks(_results(out, "solution"))}
    assert sum(full.values()) == corpus.total_points()
    wrong = {}
    for sid, declared in expect.items():
        row = rows[sid]
        if declared is None:
            assert row["status"] == "ungradable" and "not a valid notebook" in row["reason"], row
            continue
        assert row["status"] == "graded", (sid, row["reason"])
        want = {q: declared.get(q, declared.get("*", points)) for q, points in full.items()}
        got = {q: float(row[q]) for q in full}
        if got != want:
            wrong[sid] = {q: (got[q], want[q]) for q in full if got[q] != want[q]}
    assert not wrong, f"scores that differ from the corpus (got, declared): {wrong}"
    assert rows["solution_again"]["duplicate_of"] == "solution"
    assert rows["solution"]["upload"] == "solution.ipynb"
    assert rows["solution-2"]["upload"] == f"{CLASHING}.ipynb"
    assert rows["submission_9002"]["student"] == "Alan Turing; Grace Hopper"
    assert rows["submission_9001"]["email"] == "ada@example.edu"


def test_hostile_submissions_change_no_other_row(graded_class):
    """Each hostile submission scores 0 and writes nothing outside its own row: every other row
    equals its grading without them (the solution's row doubles as that reference here, graded
    in the same run, so the comparison covers solution, duplicate and the Gradescope copy)."""
    _, out, _, _ = graded_class
    rows = _rows(out / "grades.csv", drop=("seconds", "submission", "upload", "duplicate_of",
                                           "student", "sid", "email"))  # fmt: skip
    for sid in ("h_otter", "h_forge_results"):
        assert float(rows[sid]["total"]) == 0.0, rows[sid]
        assert "FORGED" not in (out / "submissions" / sid / "results.json").read_text()
    assert rows["submission_9001"] == rows["solution"] == rows["solution_again"]
    results = {p.parent.name for p in (out / "submissions").glob("*/results.json")}
    assert results == set(_rows(out / "grades.csv")), "every submission has its results.json"


def _results(out: Path, sid: str) -> dict:
    return json.loads((out / "submissions" / sid / "results.json").read_text())


def test_resume_grades_nothing_and_force_regrades(graded_class, tmp_path):
    subs, out, expect, first = graded_class
    # The corrupt upload is not "graded now": it is the one that could not be graded.
    gradable = sum(declared is not None for declared in expect.values())
    assert f"{gradable} graded now, 0 reused" in first and "1 could not be graded" in first, first
    assert f"{CLASHING}.ipynb is graded as 'solution-2'" in first, first  # the renaming is said
    stamps = {p: p.stat().st_mtime_ns for p in (out / "submissions").rglob("record.json")}
    again = _batch("batch", corpus.ZIP, subs, out, "--jobs", "2", "--no-progress")
    assert f"0 graded now, {len(expect)} reused" in again.stdout, again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "submissions").rglob("record.json")}
    # --force on a two-submission subset, in a copy of OUT: both are graded again, and this
    # second grading gives the same rows as the first (all but the seconds).
    subset, copy = tmp_path / "subset", tmp_path / "out"
    subset.mkdir()
    for name in (f"{_pack_id(PACKS[0])}.ipynb", "corrupt.ipynb"):
        shutil.copyfile(subs / name, subset / name)
    shutil.copytree(out, copy)
    forced = _batch("batch", corpus.ZIP, subset, copy, "--jobs", "2", "--no-progress", "--force")
    assert "1 graded now, 0 reused" in forced.stdout, forced.stdout
    assert "1 could not be graded" in forced.stdout, forced.stdout
    old, new = _rows(out / "grades.csv"), _rows(copy / "grades.csv")
    assert set(new) == {_pack_id(PACKS[0]), "corrupt"}
    assert {k: old[k] for k in new} == new


def test_two_shards_merged_equal_the_unsharded_run(graded_class, tmp_path):
    """Each shard resumes from a copy of the graded OUT (so nothing is graded again)."""
    subs, out, _, _ = graded_class
    shards = []
    for k in range(2):
        shard = tmp_path / f"shard{k}"
        shutil.copytree(out, shard)
        shutil.rmtree(shard / "submissions")
        shutil.copytree(out / "submissions", shard / "submissions")
        _batch("batch", corpus.ZIP, subs, shard, "--shard", f"{k}/2", "--no-progress")
        # A shard keeps only its own folders, as a shard job on another machine would have.
        mine = set(_rows(shard / "grades.csv"))
        for folder in (shard / "submissions").iterdir():
            if folder.name not in mine:
                shutil.rmtree(folder)
        shards.append(shard)
    ids = [set(_rows(s / "grades.csv")) for s in shards]
    assert ids[0] and ids[1] and not ids[0] & ids[1], ids
    _batch("merge", *shards, "--out", tmp_path / "merged")
    merged = (tmp_path / "merged" / "grades.csv").read_text()
    assert merged == (out / "grades.csv").read_text()  # every column, the seconds included


def test_report_in_a_browser(graded_class):
    """report.html opened in headless chromium: histogram, per-question table, failure
    messages, the ungradable file and the duplicate pair in the similarity table."""
    _, out, _, _ = graded_class
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright import sync_api

    SCREENSHOT.parent.mkdir(exist_ok=True)

    def read_report() -> tuple[str, int]:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto((out / "report.html").as_uri())
                image = page.locator("img[alt='Score histogram']")
                width = image.evaluate("img => img.naturalWidth")
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                return page.inner_text("body"), width
            finally:
                browser.close()

    # In a thread of its own: Playwright's sync API refuses a thread where an event loop runs,
    # and the browser tests' Playwright may still hold this worker's main thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        text, width = pool.submit(read_report).result()
    assert width > 100, "the histogram image did not load"
    assert "Score histogram" in text and "Per-question pass rate" in text
    failed = corpus.failed_checks(_results(out, _pack_id(PACKS[0])))
    assert failed and all(check in text for check in failed), failed
    assert "corrupt" in text and "not a valid notebook" in text
    assert "solution\tsolution_again" in text or "solution solution_again" in text, text[-2000:]


def test_manual_page_shows_answers_beside_the_rubric(graded_class):
    _, out, expect, _ = graded_class
    page = (out / "manual.html").read_text()
    assert "Question 13" in page and "Question 14" in page
    cells = corpus.solution().cells
    prompt = next(i for i, c in enumerate(cells) if "### Question 13" in c.source)
    solution = next(
        c.source
        for c in cells[prompt:]
        if "otter_assign_solution_cell" in c.metadata.get("tags", [])
    )
    first_line = solution.replace("<!-- BEGIN QUESTION -->", "").strip().splitlines()[0]
    # The page renders Markdown: compare the text a reader sees, tags and entities removed.
    seen = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert first_line.replace("**", "") in seen, "the master's solution to q13 is its rubric"
    assert "Ada Lovelace" in page and ADA in seen
    # Ada answered q13 only; every other graded submission left both answers blank.
    others = sum(declared is not None for declared in expect.values()) - 1
    assert page.count("no answer") == 2 * others + 1
