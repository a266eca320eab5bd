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
#: Answer code kept per upload: the first 100,000 characters (12 times all the solution's
#: answer code, 8.4 kB) are what record.json stores and the similarity table fingerprints.
#: copydetect costs up to ~17 CPU-s per MB of code, so this bounds one upload to ~2 s. Longer
#: code is cut, with a note at the cut.
MAX_CODE_CHARS = 100_000
#: Text kept per hand-graded answer (manual.html renders it as Markdown; a real answer is a
#: few kB).
MAX_MANUAL_CHARS = 20_000
#: Characters kept of a question's heading (a heading line may be megabytes long).
MAX_TITLE_CHARS = 200


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(map(str, source)) if isinstance(source, list) else str(source)


def _tags(cell: dict[str, Any]) -> set[str]:
    """The cell's tags; a hand-edited notebook may hold anything where nbformat wants a list."""
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, dict) else None
    return {t for t in tags if isinstance(t, str)} if isinstance(tags, list) else set()


def _cut(text: str, limit: int, what: str, total: int | None = None) -> str:
    """``text`` up to ``limit`` characters, with a note of its ``total`` length where it is cut."""
    total = len(text) if total is None else total
    if total <= limit:
        return text
    return text[:limit] + f"\n\n[{what} cut here: {total:,} characters; see the notebook]"


def _notebook_bytes(sub: Submission, prefer: str = "") -> tuple[bytes | None, str]:
    """The upload's notebook: the first .ipynb, or the first one inside a zip, files named
    ``prefer`` first (as the grader picks: red team rt10 lost a student's answers to a draft
    beside the graded notebook); and, when there is none, why (what the manual page shows). A
    zip bigger than MAX_NOTEBOOK_BYTES is not opened (its central directory alone could take
    gigabytes of memory to list)."""
    why = "no notebook found"
    files = sorted(sub.files, key=lambda p: (p.name != prefer, p))
    for path in files:
        if path.suffix.lower() == ".ipynb" and path.stat().st_size <= MAX_NOTEBOOK_BYTES:
            return path.read_bytes(), ""
    for path in files:
        if path.suffix.lower() != ".zip" or path.stat().st_size > MAX_NOTEBOOK_BYTES:
            continue
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.infolist()
                for info in sorted(members, key=lambda i: i.filename.rsplit("/", 1)[-1] != prefer):
                    name = info.filename
                    if (
                        name.lower().endswith(".ipynb")
                        and "__MACOSX" not in name
                        and (info.file_size <= MAX_NOTEBOOK_BYTES)
                    ):
                        return zf.read(info), ""  # at most file_size bytes: zipfile stops there
        except Exception as err:
            # Any broken zip (method 99, the "encrypted" flag, bad deflate data, a cut
            # member...) is this upload's problem: its other files may still hold one.
            why = f"{sub.relative(path)} is not a readable zip: {type(err).__name__}: {err}"[:200]
    return None, why


def assignment_name(zip_path: Path) -> str:
    """The assignment's name from the zip's otter_config.json (``offline_rl`` if absent)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return str(json.loads(zf.read("otter_config.json")).get("assignment_name", ""))
    except (KeyError, ValueError, zipfile.BadZipFile):
        return "offline_rl"


def from_notebook(nb: dict[str, Any]) -> dict[str, Any]:
    """``{"manual": {question number: text}, "code": all code answers, "titles": {n: heading}}``.

    Linear in the notebook (red team rt11: answers joined cell by cell cost the square of their
    number, 29 CPU-s for 13 MB, before any grading of the class started): each question's answer
    cells are collected until MAX_MANUAL_CHARS and joined once; headings are cut at
    MAX_TITLE_CHARS."""
    parts: dict[str, list[str]] = {}
    lengths: dict[str, int] = {}
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
                titles[question] = heading.group(0)[:MAX_TITLE_CHARS].lstrip("#").strip()
        tags = _tags(cell)
        if cell.get("cell_type") == "markdown" and ANSWER_TAG in tags and question is not None:
            kept, text = parts.setdefault(question, []), source.rstrip()
            if text:  # the cells' texts, each without trailing space, a blank line between
                so_far = lengths.get(question, -2)
                lengths[question] = so_far + 2 + len(text)
                if so_far < MAX_MANUAL_CHARS:
                    kept.append(text[:MAX_MANUAL_CHARS])
        elif cell.get("cell_type") == "code" and {ANSWER_TAG, SOLUTION_TAG} & set(tags):
            # Students answer in otter_answer_cell cells; otter's solution notebook (which
            # instructors may grade too) tags the same cells otter_assign_solution_cell.
            code.append(source)
    manual = {}
    for q, texts in parts.items():
        joined = "\n\n".join(texts)
        text = joined.lstrip()
        total = lengths.get(q, 0) - (len(joined) - len(text))  # all the cells', not the kept
        manual[q] = _cut(text, MAX_MANUAL_CHARS, "answer", total=total)
    return {"manual": manual, "code": "\n\n".join(code), "titles": titles}


def extract(sub: Submission, prefer: str = "") -> dict[str, Any]:
    """The answers of an upload; empty when it holds no readable notebook.

    Never raises for a bad upload (the batch reads every upload itself, before any grading, so
    an exception here would stop the whole class): whatever goes wrong (a RecursionError from
    JSON nested too deep, a zip with an unknown method, a MemoryError...) is one upload's
    "unreadable" reason. The answers are a convenience for the instructor; the grade is the
    grader's. Work is bounded: MAX_NOTEBOOK_BYTES read, MAX_CODE_CHARS / MAX_MANUAL_CHARS kept.
    """
    try:
        data, why = _notebook_bytes(sub, prefer)
        nb = json.loads(data.decode("utf-8", errors="replace")) if data is not None else None
        why = why or "not a valid notebook: the JSON is not an object"
        if isinstance(nb, dict):
            found = from_notebook(nb)  # manual answers cut there
            return {**found, "code": _cut(found["code"], MAX_CODE_CHARS, "code")}
    except Exception as err:  # see above: one upload, never the batch
        why = f"not a valid notebook: {type(err).__name__}: {str(err)[:120]}"
    # "unreadable" lets manual.html say "could not be read" rather than "no answer".
    return {"manual": {}, "code": "", "titles": {}, "unreadable": why}


def rubric(solution: Path) -> dict[str, dict[str, str]]:
    """Question number -> ``{"title", "rubric"}`` for each manually graded question of otter's
    solution notebook: a markdown answer cell followed by the master's solution cell."""
    nb = json.loads(solution.read_text(encoding="utf-8"))
    found: dict[str, dict[str, str]] = {}
    question, title, after_answer = None, "", False
    for cell in nb.get("cells", []):
        source, tags = _source(cell), _tags(cell)
        heading = HEADING.search(source) if cell.get("cell_type") == "markdown" else None
        if heading:
            question, title = heading.group(1), heading.group(0).lstrip("#").strip()
        if cell.get("cell_type") == "markdown" and SOLUTION_TAG in tags and after_answer:
            text = source.replace("<!-- BEGIN QUESTION -->", "").strip()
            text = re.sub(r"(?<!\n)\n(?!\n)", " ", text)  # the master's hard wraps: one paragraph
            found[str(question)] = {"title": title, "rubric": text}
        after_answer = cell.get("cell_type") == "markdown" and ANSWER_TAG in tags
    return found
