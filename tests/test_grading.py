"""Full grading runs of the built autograder zip.

* with plain `otter run` (what an instructor may still use locally) the solution scores full
  marks and the blank notebook's public checks say "not implemented yet", not a traceback;
* with the sandboxed grader (what Gradescope runs) the untouched student notebook scores zero with
  a message per question, and a student notebook with the solutions pasted back in, exported
  with ``grader.export()``, scores full marks (the path a real student takes).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager

from tests.conftest import require_root
from tests.corpus import corpus

ROOT = Path(__file__).resolve().parents[1]
NAME = "offline_rl"
SOLUTION = ROOT / "autograder" / NAME / f"{NAME}-solution.ipynb"
STUDENT_DIR = ROOT / "student_release" / NAME

pytestmark = pytest.mark.slow


def question_scores(results: dict) -> dict[str, tuple[float, float]]:
    return {
        t["name"]: (float(t["score"]), float(t["max_score"]))
        for t in results["tests"]
        if "max_score" in t and t.get("max_score") is not None and t["name"] != "Public Tests"
    }


def submission_copy(tmp_path: Path, notebook: Path) -> Path:
    """A student working folder: the notebook beside the shipped support package."""
    work = tmp_path / "work"
    shutil.copytree(STUDENT_DIR, work)
    target = work / f"{NAME}.ipynb"
    shutil.copyfile(notebook, target)
    return target


def test_plain_otter_run_gives_the_solution_full_marks():
    results = corpus.grade_plain_otter(corpus.solution())
    scores = question_scores(results)
    assert len(scores) >= 12, scores
    lost = {name: s for name, s in scores.items() if s[0] != s[1]}
    assert not lost, f"the solution lost points: {lost}"


def test_untouched_student_notebook_scores_zero_with_a_message_per_question():
    require_root()
    results = corpus.grade(corpus.student())
    assert results["score"] == 0
    for test in results["tests"]:
        if test["max_score"]:
            assert test["score"] == 0 and "✗ hidden check" in test["output"], test
    outputs = "\n".join(t["output"] for t in results["tests"])
    assert "your function returned None (is it implemented?)" in outputs
    assert "raised counts" not in outputs  # returning None is not raising
    assert "site-packages" not in outputs and "Traceback" not in outputs


def test_plain_otter_public_checks_teach_on_a_blank_notebook():
    results = corpus.grade_plain_otter(corpus.student())
    scores = question_scores(results)
    earned = {name: s for name, s in scores.items() if s[0] != 0}
    assert not earned, f"a blank notebook earned points: {earned}"
    public = next(t for t in results["tests"] if t["name"] == "Public Tests")["output"]
    assert "replace the ... with your code" in public, public[:2000]
    assert "site-packages" not in public and "offline_rl/datasets.py" not in public, (
        "a blank answer must fail with a teaching message, not a traceback from support code"
    )


def _answer_key(source: str) -> str:
    lines = source.strip().splitlines()
    if lines[0].lstrip('"').strip() == "# BEGIN PROMPT":  # otter keeps the prompt in the solution
        lines = lines[1:]
    return lines[0].split("(")[0].split("=")[0].strip()


def _run_headless(notebook: Path, cell_timeout: float) -> list[tuple[str, list[dict], float]]:
    """Run every code cell of ``notebook`` in a fresh kernel started in its folder; return
    (source, iopub messages of the cell, seconds) per code cell.

    jupyter_client's blocking ``execute_interactive``, not nbclient: nbclient 0.11's async
    polling can sit on a widget cell's finished reply until its cell timeout, then carry on
    without an error (jupyter/nbclient#312; seen here as a 5 s demo cell taking 300 s and 600 s).
    """
    nb = nbformat.read(notebook, as_version=4)
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(notebook.parent))
    client = manager.client()
    client.start_channels()
    ran = []
    try:
        client.wait_for_ready(timeout=60)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            messages: list[dict] = []
            start = time.monotonic()
            reply = client.execute_interactive(
                cell.source, timeout=cell_timeout, output_hook=messages.append, allow_stdin=False
            )
            messages.append({"msg_type": "execute_reply", "content": reply["content"]})
            ran.append((cell.source, messages, time.monotonic() - start))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return ran


def _errors(ran: list[tuple[str, list[dict], float]]) -> list[tuple[str, str, str]]:
    """(cell start, exception name, message) of every cell that raised."""
    return [
        (source[:80], m["content"].get("ename"), m["content"].get("evalue"))
        for source, messages, _ in ran
        for m in messages
        if m["msg_type"] == "error"
        or (m["msg_type"] == "execute_reply" and m["content"].get("status") != "ok")
    ]


def test_pasted_solutions_exported_with_grader_export_score_full_marks(tmp_path):
    student_nb = STUDENT_DIR / f"{NAME}.ipynb"
    work_nb = submission_copy(tmp_path, student_nb)
    nb = nbformat.read(work_nb, as_version=4)
    solution = nbformat.read(SOLUTION, as_version=4)
    solutions = {
        _answer_key(c.source): c.source
        for c in solution.cells
        if c.cell_type == "code" and c.source.strip()
    }
    pasted = 0
    for cell in nb.cells:
        if (
            cell.cell_type == "code"
            and "..." in cell.source
            and _answer_key(cell.source) in solutions
        ):
            cell.source = solutions[_answer_key(cell.source)]
            pasted += 1
    assert pasted >= 12, f"only {pasted} answer cells matched the solution notebook"
    # Demos are for people; skip them so the run stays short (grading skips them too).
    nb.cells = [c for c in nb.cells if "otter_ignore" not in c.metadata.get("tags", [])]
    export = next(c for c in nb.cells if "grader.export(" in c.source)
    export.source = export.source.replace("run_tests=True", "run_tests=False")
    nbformat.write(nb, work_nb)
    errors = _errors(_run_headless(work_nb, cell_timeout=600))
    assert not errors, errors[:1]
    zips = sorted(work_nb.parent.glob(f"{NAME}_*.zip"))
    assert zips, "grader.export() wrote no zip"
    require_root()
    results = corpus.grade(None, files={zips[-1].name: zips[-1].read_bytes()})
    scores = corpus.question_scores(results)
    lost = {q: s for q, s in scores.items() if s != corpus.full_marks(results)[q]}
    assert len(scores) >= 12 and not lost, f"pasted solutions lost points: {lost}"


def test_the_grader_skips_exactly_otters_own_cells():
    """Otter's init, check and export cells are not run (importing otter costs seconds of every
    grading); a cell that adds anything to them is the student's and runs."""
    from grading.runner import code_cells

    init = '# Initialize Otter\nimport otter\ngrader = otter.Notebook("offline_rl.ipynb")'
    sources = [
        init,
        'grader.check("q1_coverage")',
        '# Save first\ngrader.export(export_path="x.zip", pdf=False)',
        init + "\nimport os",
        "import otter\nprint(otter.__version__)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    cells, skipped = code_cells(nb)
    assert [c.source for c in cells] == sources[3:]
    assert skipped == 0  # skipping scaffolding is silent; only otter_ignore demos are counted
