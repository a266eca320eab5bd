"""Full grading runs of the built autograder zip.

* with plain `otter run` (what an instructor may still use locally) the solution scores full
  marks and the blank notebook's public checks say "not implemented yet", not a traceback;
* with the sandboxed grader (what Gradescope runs) the untouched student notebook scores zero with
  a message per question, and a student notebook with the solutions pasted back in, exported
  with ``grader.export()``, scores full marks (the path a real student takes).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
    first = source.strip().splitlines()[0]
    return first.split("(")[0].split("=")[0].strip()


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
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(work_nb.parent)}},
    ).execute()
    zips = sorted(work_nb.parent.glob(f"{NAME}_*.zip"))
    assert zips, "grader.export() wrote no zip"
    require_root()
    results = corpus.grade(None, files={zips[-1].name: zips[-1].read_bytes()})
    scores = corpus.question_scores(results)
    lost = {q: s for q, s in scores.items() if s != corpus.full_marks(results)[q]}
    assert len(scores) >= 12 and not lost, f"pasted solutions lost points: {lost}"


def test_solution_notebook_runs_headless_top_to_bottom(tmp_path, record_property):
    """Every cell, demos included, executes without error and without hanging (nbclient)."""
    work_nb = submission_copy(tmp_path, SOLUTION)
    nb = nbformat.read(work_nb, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(work_nb.parent)}},
    )
    seconds: list[tuple[float, int]] = []
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            start = time.monotonic()
            client.execute_cell(cell, index)
            seconds.append((time.monotonic() - start, index))
    slowest = ", ".join(f"cell {i} {s:.1f} s" for s, i in sorted(seconds, reverse=True)[:3])
    record_property("measured", f"{sum(s for s, _ in seconds):.0f} s; slowest: {slowest}")
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors[:1]
    demo_outputs = [
        cell.outputs for cell in nb.cells if "widgets." in cell.source and cell.cell_type == "code"
    ]
    assert all(demo_outputs), "every demo cell must display something"
    shown = json.dumps(demo_outputs)
    assert "waiting for your code" not in shown, "a demo did not run on the solution's functions"


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
