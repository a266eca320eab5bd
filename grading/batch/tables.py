"""The gradebook: rows of OUT/submissions/*/, ``grades.csv``, Canvas's import CSV, regrade diffs."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grading.batch.run import RECORD, RESULTS

#: Columns before the questions and after them; ``seconds`` is the only one that varies between
#: two gradings of the same class (tests compare everything else).
LEAD = ["submission", "upload", "student", "sid", "email"]
TAIL = ["total", "max", "status", "reason", "duplicate_of", "seconds", "autograder_sha256"]
#: Canvas's gradebook import: these five identify the student, then one column per assignment.
CANVAS_LEAD = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
#: A cell starting with one of these is a formula to Excel/LibreOffice (OWASP "CSV injection"):
#: a student's name like ``=HYPERLINK(...)`` would run when the instructor opens the file.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(text: object) -> str:
    """``text`` safe as a spreadsheet cell (a student's name, id, e-mail, a reason).

    On one line: the writer's line ends are ``\n`` only, so it leaves a ``\r`` unquoted, and
    spreadsheets and ``csv.reader`` start a new row there (a row a name could forge). Then a
    leading ``'`` (OWASP's advice; the text stays readable) when it could start a formula, also
    after leading blanks, and when it starts with ``'`` itself, so that ``uncell`` gives back
    exactly what was written.
    """
    text = re.sub(r"[\r\n]+", " ", str(text))
    if text.lstrip().startswith(FORMULA_START) or text.startswith(("\t", "'")):
        return "'" + text
    return text


def uncell(text: str) -> str:
    """What ``cell`` was given (its line breaks aside)."""
    return text[1:] if text.startswith("'") else text


@dataclass(frozen=True)
class Row:
    """One submission as the gradebook shows it."""

    record: dict[str, Any]
    """record.json: student, hashes, status, answers."""
    results: dict[str, Any] | None
    """results.json as the grader wrote it (None when it wrote none)."""

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def upload(self) -> str:
        """The file or folder name the student's upload had in SUBMISSIONS (several uploads can
        share an id's stem: this says which one the row is)."""
        return Path(str(self.record.get("source", ""))).name

    def scores(self) -> dict[str, float]:
        """Question -> score, for the questions that carry points."""
        tests = (self.results or {}).get("tests", [])
        return {t["name"]: float(t["score"]) for t in tests if float(t.get("max_score", 0)) > 0}

    def maxima(self) -> dict[str, float]:
        tests = (self.results or {}).get("tests", [])
        return {t["name"]: float(t["max_score"]) for t in tests if float(t.get("max_score", 0)) > 0}

    def total(self) -> float:
        return round(float((self.results or {}).get("score", 0.0)), 6)


def load_rows(out: Path) -> list[Row]:
    """Every graded submission under ``out/submissions``, sorted by id."""
    rows = []
    for folder in sorted((out / "submissions").glob("*/")):
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            continue  # a grading that never finished: the next run grades it again
        results = None
        if (folder / RESULTS).is_file():
            results = json.loads((folder / RESULTS).read_text())
        rows.append(Row(record, results))
    return rows


def question_order(rows: list[Row]) -> tuple[list[str], dict[str, float]]:
    """Questions in number order (q2 before q10) and each one's maximum."""
    maxima: dict[str, float] = {}
    for row in rows:
        maxima.update(row.maxima())

    def number(name: str) -> tuple[int, str]:
        match = re.match(r"[qQ](\d+)", name)
        return (int(match.group(1)) if match else 10**6, name)

    names = sorted(maxima, key=number)
    return names, maxima


def duplicates(rows: list[Row]) -> dict[str, str]:
    """Submission id -> the first id (by sorting) whose upload holds the same bytes."""
    first: dict[str, str] = {}
    dup = {}
    for row in rows:
        sha = row.record.get("content_sha256")
        if not sha:
            continue
        if sha in first:
            dup[row.id] = first[sha]
        else:
            first[sha] = row.id
    return dup


def _fmt(x: float) -> str:
    return f"{round(x, 6):g}"


def write_grades(rows: list[Row], path: Path) -> list[str]:
    """``grades.csv``: one row per submission; returns its question columns."""
    questions, maxima = question_order(rows)
    possible = sum(maxima.values())
    dup = duplicates(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*LEAD, *questions, *TAIL])
        for row in rows:
            student, scores = row.record.get("student", {}), row.scores()
            writer.writerow(
                [
                    cell(row.id),
                    cell(row.upload),
                    cell(student.get("name", "")),
                    cell(student.get("sid", "")),
                    cell(student.get("email", "")),
                    *(_fmt(scores[q]) if q in scores else "" for q in questions),
                    _fmt(row.total()),
                    _fmt(possible),
                    row.record.get("status", ""),
                    cell(_one_line(row.record.get("reason", ""))),
                    cell(dup.get(row.id, "")),
                    f"{float(row.record.get('wall_seconds', 0.0)):.1f}",
                    row.record.get("autograder_sha256", "")[:16],
                ]
            )
    return questions


def _one_line(text: str) -> str:
    """A reason on one CSV line, complete (a spreadsheet cell holds it; nothing is cut)."""
    return re.sub(r"\s+", " ", text).strip()


def shorten(text: str, width: int = 200) -> str:
    """``text`` on one line, cut at a word boundary with "…" when longer than ``width``."""
    line = _one_line(text)
    if len(line) <= width:
        return line
    cut = line[: width - 1]
    if " " in cut and not line[width - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


def write_canvas(rows: list[Row], path: Path, assignment: str) -> None:
    """Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then one column
    for the assignment. Canvas matches students by ID, SIS User ID or SIS Login ID; Gradescope's
    export gives the student id (``:sid:``) and e-mail, written as SIS User ID and SIS Login ID.
    A submission without a named student cannot be imported and is left out. The second row is
    Canvas's optional "Points Possible" row."""
    _questions, maxima = question_order(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*CANVAS_LEAD, assignment])
        writer.writerow(["Points Possible", "", "", "", "", _fmt(sum(maxima.values()))])
        for row in rows:
            student = row.record.get("student", {})
            if not _named(row):
                continue
            names = [n for n in student.get("name", "").split("; ")]
            sids = student.get("sid", "").split("; ")
            emails = student.get("email", "").split("; ")
            for i, name in enumerate(names):  # a group submission: one line per member
                sid = sids[i] if i < len(sids) else ""
                email = emails[i] if i < len(emails) else ""
                writer.writerow([cell(name), "", cell(sid), cell(email), "", _fmt(row.total())])


def _named(row: Row) -> bool:
    student = row.record.get("student", {})
    return bool(student.get("name") or student.get("sid") or student.get("email"))


def canvas_note(rows: list[Row]) -> str:
    """What the run's output says about grades-canvas.csv when submissions are missing from it
    ('' when every submission is in it)."""
    left_out = [r.id for r in rows if not _named(r)]
    if not left_out:
        return ""
    return (
        f"grades-canvas.csv: {len(left_out)} of {len(rows)} submissions are NOT in it: no student "
        "is named for them (only Gradescope's export, with submission_metadata.yml, names "
        "students; plain notebooks and zips do not). Enter those grades by hand."
    )


def read_grades(path: Path) -> dict[str, dict[str, str]]:
    """An earlier ``grades.csv``: submission -> its row.

    Raises:
        ValueError: the file has no ``submission`` column (not a grades.csv of this tool).
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "submission" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no 'submission' column; pass a grades.csv this tool wrote")
        return {uncell(row["submission"]): {k: uncell(v or "") for k, v in row.items()}
                for row in reader}  # fmt: skip


def regrade_diff(old: dict[str, dict[str, str]], rows: list[Row]) -> list[dict[str, Any]]:
    """Who moved, on which question: one entry per changed submission (new, gone or rescored)."""
    questions, _ = question_order(rows)
    changes = []
    now = {row.id: row for row in rows}
    for sid in sorted(set(old) | set(now)):
        if sid not in now:
            changes.append({"submission": sid, "before": old[sid].get("total", ""), "after": "—",
                            "questions": "no longer in this run"})  # fmt: skip
            continue
        row = now[sid]
        if sid not in old:
            changes.append({"submission": sid, "before": "—", "after": _fmt(row.total()),
                            "questions": "new in this run"})  # fmt: skip
            continue
        moved = []
        scores = row.scores()
        for q in questions:
            before, after = old[sid].get(q, ""), _fmt(scores[q]) if q in scores else ""
            if _num(before) != _num(after):
                moved.append(f"{q}: {before or '—'} → {after or '—'}")
        if moved or _num(old[sid].get("total", "")) != row.total():
            changes.append({"submission": sid, "before": old[sid].get("total", ""),
                            "after": _fmt(row.total()), "questions": "; ".join(moved)})  # fmt: skip
    return changes


def _num(text: str | float) -> float | None:
    try:
        return round(float(text), 6)
    except (TypeError, ValueError):
        return None
