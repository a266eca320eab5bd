"""Read a student's answer cells (for manual.html and the similarity table), never run them.

Otter's student notebook tags every answer cell ``otter_answer_cell``; the question an answer
belongs to is the last ``### Question N`` heading above it. Free-text (markdown) answer cells are
what manual grading needs; code answer cells are what the similarity table compares. A student
can remove a tag, so this is a convenience for the instructor, never part of grading.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from grading.batch.inputs import Submission

ANSWER_TAG = "otter_answer_cell"
SOLUTION_TAG = "otter_assign_solution_cell"
HEADING = re.compile(r"^#+\s*Question\s+(\d+)\b[^\n]*", re.M)
#: A notebook bigger than this is not read for answers (the grader refuses it too).
MAX_NOTEBOOK_BYTES = 64 * 2**20


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _notebook_bytes(sub: Submission) -> bytes | None:
    """The upload's notebook: the first .ipynb, or the first one inside a zip."""
    for path in sub.files:
        if path.suffix == ".ipynb" and path.stat().st_size <= MAX_NOTEBOOK_BYTES:
            return path.read_bytes()
    for path in sub.files:
        if path.suffix == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        name = info.filename
                        if (
                            name.endswith(".ipynb")
                            and "__MACOSX" not in name
                            and (info.file_size <= MAX_NOTEBOOK_BYTES)
                        ):
                            return zf.read(info)
            except (zipfile.BadZipFile, OSError):
                continue
    return None


def from_notebook(nb: dict[str, Any]) -> dict[str, Any]:
    """``{"manual": {question number: text}, "code": all code answers, "titles": {n: heading}}``."""
    manual: dict[str, str] = {}
    titles: dict[str, str] = {}
    code: list[str] = []
    question = None
    for cell in nb.get("cells", []) if isinstance(nb.get("cells"), list) else []:
        if not isinstance(cell, dict):
            continue
        source = _source(cell)
        if cell.get("cell_type") == "markdown":
            heading = HEADING.search(source)
            if heading:
                question = heading.group(1)
                titles[question] = heading.group(0).lstrip("#").strip()
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "markdown" and ANSWER_TAG in tags and question is not None:
            manual[question] = (manual.get(question, "") + "\n\n" + source).strip()
        elif cell.get("cell_type") == "code" and {ANSWER_TAG, SOLUTION_TAG} & set(tags):
            # Students answer in otter_answer_cell cells; otter's solution notebook (which
            # instructors may grade too) tags the same cells otter_assign_solution_cell.
            code.append(source)
    return {"manual": manual, "code": "\n\n".join(code), "titles": titles}


def extract(sub: Submission) -> dict[str, Any]:
    """The answers of an upload; empty when it holds no readable notebook."""
    why = "no notebook found"
    try:
        data = _notebook_bytes(sub)
        nb = json.loads(data.decode("utf-8", errors="replace")) if data else None
    except (OSError, ValueError) as err:
        nb, why = None, f"not a valid notebook: {str(err)[:120]}"
    if isinstance(nb, dict):
        return from_notebook(nb)
    # "unreadable" lets manual.html say "could not be read" rather than "no answer".
    return {"manual": {}, "code": "", "titles": {}, "unreadable": why}


def rubric(solution: Path) -> dict[str, dict[str, str]]:
    """Question number -> ``{"title", "rubric"}`` for each manually graded question of otter's
    solution notebook: a markdown answer cell followed by the master's solution cell."""
    nb = json.loads(solution.read_text(encoding="utf-8"))
    found: dict[str, dict[str, str]] = {}
    question, title, after_answer = None, "", False
    for cell in nb.get("cells", []):
        source, tags = _source(cell), (cell.get("metadata") or {}).get("tags") or []
        heading = HEADING.search(source) if cell.get("cell_type") == "markdown" else None
        if heading:
            question, title = heading.group(1), heading.group(0).lstrip("#").strip()
        if cell.get("cell_type") == "markdown" and SOLUTION_TAG in tags and after_answer:
            text = source.replace("<!-- BEGIN QUESTION -->", "").strip()
            text = re.sub(r"(?<!\n)\n(?!\n)", " ", text)  # the master's hard wraps: one paragraph
            found[str(question)] = {"title": title, "rubric": text}
        after_answer = cell.get("cell_type") == "markdown" and ANSWER_TAG in tags
    return found
