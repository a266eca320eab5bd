"""The instructor's path without grading: points arithmetic, the corpus format, batch inputs,
shards, the gradebook, the regrade diff and the manual-grading page (issue 21). Fast: no notebook
runs here; tests/test_batch.py grades a class end to end."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from grading.batch import answers, inputs, report, tables
from grading.runner import load_questions
from tests.conftest import ROOT
from tests.corpus import corpus

sys.path.insert(0, str(ROOT / "tools"))
import contextlib

import build_release
import kill_matrix

# ----------------------------------------------------------------------------- points


def test_four_points_over_six_cases_give_four(tmp_path):
    """Otter splits a question's points over all its cases in floats; the grader's maximum must
    still be the declared 4, or a full score prints as MISMATCH 4/4!."""
    cases = "".join(
        f"@test_case(points=None, hidden={i >= 2})\ndef test_c{i}_hidden():\n    pass\n\n"
        for i in range(6)
    )
    source = 'from otter.test_files import test_case\n\nOK_FORMAT = False\n\nname = "q9_x"\n'
    (tmp_path / "q9_x.py").write_text(source + "points = 4\n\n" + cases)
    (question,) = load_questions(tmp_path)
    assert question.points == 4.0, repr(question.points)
    assert build_release.split_scores(4, 6)[-1] == 4.0


def test_total_points_line_counts_manual_questions():
    points = {
        "q1_a": build_release.QuestionPoints("q1_a", 3, False),
        "q13_b": build_release.QuestionPoints("q13_b", 2, True),
    }
    assert build_release.total_points_line(points) == (
        "total points: 5 (3 autograded + 2 graded by hand: q13)"
    )


def _registry(**checks: str) -> dict:
    return {name: SimpleNamespace(name=name, question=q) for name, q in checks.items()}


def test_release_fails_when_the_corpus_disagrees_with_the_points(tmp_path, monkeypatch):
    points = {"q4_bc": build_release.QuestionPoints("q4_bc", 4, False)}
    registry = _registry(bc_loss="q4_bc", bc_update="q4_bc")
    corpus_file = tmp_path / "mutants.toml"
    monkeypatch.setattr(build_release, "CORPUS", corpus_file)
    monkeypatch.setattr(build_release, "ROOT", tmp_path)
    corpus_file.write_text(
        '[[mutant]]\nname = "ok"\nkind = "wrong"\nscores = { q4_bc = 2.0 }\n'
        '[[mutant]]\nname = "by_check"\nkind = "wrong"\nfails = ["bc_loss"]\n'
    )
    build_release.check_corpus("offline_rl", points, registry)  # consistent: no error
    corpus_file.write_text(
        '[[mutant]]\nname = "three"\nkind = "wrong"\nscores = { q4_bc = 3.0 }\n'
        '[[mutant]]\nname = "typo"\nkind = "wrong"\nfails = ["bc_los"]\n'
        '[[mutant]]\nname = "gone"\nkind = "wrong"\nscores = { q5_x = 0.0 }\n'
    )
    with pytest.raises(build_release.BuildError) as err:
        build_release.check_corpus("offline_rl", points, registry)
    message = str(err.value)
    assert "three: q4_bc = 3, but 4 points over 2 hidden check(s) give only 0, 2" in message
    assert "typo: fails names 'bc_los'" in message and "gone: scores names 'q5_x'" in message


def test_the_release_corpus_agrees_with_the_master():
    """The real corpus and master, as `make release` checks them (no grading)."""
    import jupytext

    spec = build_release.AssignmentSpec.load(ROOT / "assignments" / "offline_rl")
    master = jupytext.read(spec.source / "master.py")
    points = build_release.question_points(master)
    assert {q.name for q in points.values() if q.manual} == {
        "q13_bc_enough",
        "q14_design_stitching",
    }
    checks = corpus.question_checks()
    registry = {c: SimpleNamespace(name=c, question=q) for q, cs in checks.items() for c in cs}
    build_release.check_corpus("offline_rl", points, registry)
    auto = sum(q.points for q in points.values() if not q.manual)
    assert auto == corpus.total_points()


def test_fails_gives_the_split_score():
    checks = corpus.question_checks()
    full = {q.name: q.points for q in corpus._questions()}
    question = next(q for q, cs in checks.items() if len(cs) > 1)
    first = checks[question][0]
    mutant = corpus.Mutant(name="x", kind="wrong", why="", fails=(first,))
    want = round(full[question] * (len(checks[question]) - 1) / len(checks[question]), 6)
    assert corpus.expected_scores(mutant, full)[question] == want
    with pytest.raises(AssertionError, match="unknown hidden checks"):
        corpus.scores_from_fails(("no_such_check",), full)


def test_check_question_accepts_a_prefix_and_never_confuses_q1_with_q10():
    names = ["q1_coverage", "q10_why", "q15_awr_weights"]
    assert kill_matrix.matching_questions("q1", names) == ["q1_coverage"]
    assert kill_matrix.matching_questions("q15_awr", names) == ["q15_awr_weights"]
    assert kill_matrix.matching_questions("q16", names) == []


# ----------------------------------------------------------------------------- inputs

METADATA = """\
submission_7:
  :submitters:
  - :name: Ada Lovelace
    :sid: '7'
    :email: ada@example.edu
  :score: !ruby/object:BigDecimal 18:0.35e2
  :history: []
submission_8:
  :submitters:
  - :name: A
    :sid: '81'
  - :name: B
    :sid: '82'
"""


def test_discover_reads_every_layout(tmp_path):
    (tmp_path / "alice.ipynb").write_text("{}")
    (tmp_path / "bob_submission.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (tmp_path / "submission_7").mkdir()
    (tmp_path / "submission_7" / "offline_rl.ipynb").write_text("{}")
    (tmp_path / "submission_8" / "nested").mkdir(parents=True)
    (tmp_path / "submission_8" / "nested" / "x.zip").write_bytes(b"x")
    (tmp_path / "submission_metadata.yml").write_text(METADATA)
    found = {s.id: s for s in inputs.discover(tmp_path)}
    assert sorted(found) == ["alice", "bob_submission", "submission_7", "submission_8"]
    assert found["submission_7"].student == inputs.Student("Ada Lovelace", "7", "ada@example.edu")
    assert found["submission_8"].student.sid == "81; 82"
    assert [found["submission_8"].relative(p) for p in found["submission_8"].files] == [
        "nested/x.zip"
    ]
    with pytest.raises(ValueError, match="not a folder"):
        inputs.discover(tmp_path / "alice.ipynb")


def test_shards_split_the_class_deterministically():
    subs = [inputs.Submission(f"s{i}", Path(f"s{i}"), ()) for i in range(40)]
    parts = [inputs.shard(subs, f"{k}/3") for k in range(3)]
    ids = [{s.id for s in p} for p in parts]
    assert set().union(*ids) == {s.id for s in subs}
    assert sum(map(len, ids)) == len(subs) and all(ids)
    assert {s.id for s in inputs.shard(subs[:20], "1/3")} == ids[1] & {s.id for s in subs[:20]}
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="K/N"):
            inputs.shard(subs, bad)


# ----------------------------------------------------------------------------- outputs


def _row(sid: str, scores: dict[str, float], status: str = "graded", **record) -> tables.Row:
    tests = [
        {"name": q, "score": s, "max_score": 2.0, "output": "✗ hidden check c_" + q + ": wrong"
         if s < 2 else "✓ hidden check c_" + q + ": passed"}
        for q, s in scores.items()
    ]  # fmt: skip
    results = {"score": sum(scores.values()), "tests": tests}
    base = {"id": sid, "status": status, "student": {}, "content_sha256": sid, "answers": {}}
    return tables.Row({**base, **record}, results)


def test_grades_csv_and_regrade_diff(tmp_path):
    rows = [_row("a", {"q10_x": 2, "q2_y": 0}), _row("b", {"q10_x": 2, "q2_y": 2})]
    tables.write_grades(rows, tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv") as f:
        header = next(csv.reader(f))
    assert header.index("q2_y") < header.index("q10_x")  # question order, not string order
    old = tables.read_grades(tmp_path / "grades.csv")
    now = [_row("a", {"q10_x": 2, "q2_y": 2}), rows[1], _row("c", {"q10_x": 0, "q2_y": 0})]
    diff = {c["submission"]: c for c in tables.regrade_diff(old, now)}
    assert set(diff) == {"a", "c"}
    assert diff["a"]["questions"] == "q2_y: 0 → 2" and diff["a"]["after"] == "4"
    assert diff["c"]["questions"] == "new in this run"


def test_report_counts_failure_messages(tmp_path):
    rows = [
        _row("a", {"q1_x": 0}),
        _row("b", {"q1_x": 0}),
        _row("c", {"q1_x": 2}),
        _row("d", {}, status="ungradable", reason="not a valid notebook"),
    ]
    (stats,) = report.question_stats(rows)
    assert (stats.full, stats.graded) == (1, 3)
    assert stats.failures == [("c_q1_x: wrong", 2)]
    report.write_report(rows, tmp_path / "r.html", title="t", regrade=None)
    page = (tmp_path / "r.html").read_text()
    assert "c_q1_x: wrong <b>(2)</b>" in page and "not a valid notebook" in page
    assert "data:image/png;base64," in page


def test_manual_page_anonymised(tmp_path):
    solution = ROOT / "autograder" / "offline_rl" / "offline_rl-solution.ipynb"
    rubric = answers.rubric(solution)
    assert set(rubric) == {"13", "14"}, rubric
    student = {"name": "Ada Lovelace"}
    rows = [
        _row("sub1", {}, student=student, answers={"manual": {"13": "my <b>answer</b>"}}),
        _row("sub2", {}),
    ]
    report.write_manual(rows, tmp_path / "manual.html", rubric, anonymise=True)
    page = (tmp_path / "manual.html").read_text()
    assert "Ada Lovelace" not in page and "sub1" not in page
    assert "my &lt;b&gt;answer&lt;/b&gt;" in page  # a student's text is escaped, never HTML
    key = (tmp_path / "manual-key.csv").read_text()
    assert "sub1" in key and "sub2" in key


def test_answers_are_read_from_an_exported_zip(tmp_path):
    import zipfile

    nb = json.loads((ROOT / "autograder/offline_rl/offline_rl-solution.ipynb").read_text())
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as zf:
        zf.writestr("offline_rl.ipynb", json.dumps(nb))
    sub = inputs.Submission("x", tmp_path / "export.zip", (tmp_path / "export.zip",))
    got = answers.extract(sub)
    assert "def td_target" in got["code"] and set(got["manual"]) == {"13", "14"}


def test_check_question_names_the_skipped_valid_entries(capsys):
    chosen = kill_matrix.select(["--question", "q4"])
    full = {q.name: q.points for q in corpus._questions()}
    assert chosen and all("q4_behavior_cloning" in corpus.declared_scores(m, full) for m in chosen)
    valid = [m.name for m in corpus.load_mutants() if m.kind == "valid"]
    out = capsys.readouterr().out
    assert f'skipped {len(valid)} kind = "valid" entries' in out and valid[0] in out
    with pytest.raises(SystemExit, match="matches no question"):
        kill_matrix.select(["--question", "q15_awr"])


# ----------------------------------------------------------------------------- resume


def test_resume_is_keyed_by_upload_and_zip(tmp_path, monkeypatch):
    """Without grading: a stand-in for the grader subprocess counts what gets graded."""
    from grading.batch import run

    graded: list[str] = []

    def fake_grade_one(sub, zip_path, out, grader_args):
        graded.append(sub.id)
        out.mkdir(parents=True, exist_ok=True)
        (out / run.RESULTS).write_text(json.dumps({"score": 1.0, "output": "", "tests": []}))
        return {"status": "graded", "reason": "", "wall_seconds": 1.0, "cpu_seconds": 1.0}

    monkeypatch.setattr(run, "grade_one", fake_grade_one)
    subs_dir, out = tmp_path / "subs", tmp_path / "out"
    subs_dir.mkdir()
    for name, text in (("a", "{}"), ("b", '{"x": 1}')):
        (subs_dir / f"{name}.ipynb").write_text(text)
    (subs_dir / "c").mkdir()
    (subs_dir / "c" / "a.ipynb").write_text("{}")  # same name and bytes as a.ipynb
    zip_a, zip_b = tmp_path / "a.zip", tmp_path / "b.zip"
    zip_a.write_bytes(b"one autograder")
    zip_b.write_bytes(b"another autograder")

    def batch(zip_path: Path, force: bool = False) -> list[str]:
        graded.clear()
        subs = inputs.discover(subs_dir)
        run.grade_all(zip_path, subs, out, run.BatchConfig(jobs=2, force=force, progress=False))
        return sorted(graded)

    assert batch(zip_a) == ["a", "b"]  # c is a's upload again: graded once, result copied
    assert json.loads((out / "submissions" / "c" / "record.json").read_text())["status"] == "graded"
    assert batch(zip_a) == []  # resumed
    (subs_dir / "b.ipynb").write_text('{"x": 2}')
    assert batch(zip_a) == ["b"]  # a changed upload
    assert batch(zip_b) == ["a", "b"]  # a rebuilt zip regrades everyone
    assert batch(zip_b, force=True) == ["a", "b"]


# ----------------------------------------------------------------------------- the batch command


def _stub_grader(monkeypatch, score: dict[str, float]) -> None:
    """``grade_one`` without a notebook run: every submission gets ``score['q1_x']`` of 2."""
    from grading.batch import run

    def fake_grade_one(sub, zip_path, out, grader_args):
        out.mkdir(parents=True, exist_ok=True)
        test = {"name": "q1_x", "score": score["q1_x"], "max_score": 2.0, "output": ""}
        results = {"score": score["q1_x"], "output": "", "tests": [test]}
        (out / run.RESULTS).write_text(json.dumps(results))
        return {"status": "graded", "reason": "", "wall_seconds": 1.0, "cpu_seconds": 1.0}

    monkeypatch.setattr(run, "grade_one", fake_grade_one)


def _class(tmp_path: Path, names: tuple[str, ...] = ("a", "b")) -> tuple[Path, Path]:
    """A folder of stand-in notebooks and a zip (the stub grader never opens either)."""
    import zipfile

    subs = tmp_path / "subs"
    subs.mkdir()
    for name in names:
        (subs / f"{name}.ipynb").write_text(json.dumps({"cells": [], "name": name}))
    zip_path = tmp_path / "autograder.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("otter_config.json", json.dumps({"assignment_name": "offline_rl"}))
    return zip_path, subs


def test_previous_inside_out_is_read_before_it_is_overwritten(tmp_path, monkeypatch):
    from grading.batch import cli

    zip_path, subs = _class(tmp_path)
    out = tmp_path / "out"
    _stub_grader(monkeypatch, {"q1_x": 0.0})
    assert cli.main_batch([str(zip_path), str(subs), str(out), "--no-progress"]) == 0
    _stub_grader(monkeypatch, {"q1_x": 2.0})
    argv = [str(zip_path), str(subs), str(out), "--no-progress", "--force"]
    assert cli.main_batch([*argv, "--previous", str(out / "grades.csv")]) == 0
    page = (out / "report.html").read_text()
    assert "Nobody moved" not in page and "q1_x: 0 → 2" in page
    assert tables.read_grades(out / cli.PREVIOUS_COPY)["a"]["total"] == "0"


def test_gradescope_points_say_manual_questions_add_to_the_autograder():
    """The README said both 'set the assignment to the total' and 'leave the autograder's
    points': Gradescope adds manual questions to the autograder's points, so only that is set."""
    points = {
        "q1_a": build_release.QuestionPoints("q1_a", 3, False),
        "q13_b": build_release.QuestionPoints("q13_b", 2, True),
        "q14_c": build_release.QuestionPoints("q14_c", 2, True),
    }
    text = build_release.gradescope_points(points)
    assert text.startswith("Autograder points: 3 ")
    assert "q13 (2 points), q14 (2 points)" in text and "total is 7" in text
    registry = _registry(c="q1_a")
    for decl in registry.values():
        decl.__dict__.update(graded=(), uses=(), hint="", tolerance="")
    table = build_release.checks_table(registry, points)
    assert "Set the Gradescope assignment's points to" not in table and text in table


def test_a_zip_outside_the_release_warns_and_leaves_no_stale_manual_page(
    tmp_path, monkeypatch, capsys
):
    from grading.batch import cli

    zip_path, subs = _class(tmp_path)  # no solution or blank notebook beside this zip
    out = tmp_path / "out"
    out.mkdir()
    (out / "manual.html").write_text("answers of last year's run")
    _stub_grader(monkeypatch, {"q1_x": 2.0})
    assert cli.main_batch([str(zip_path), str(subs), str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "manual.html" in err and "NOT written" in err and "--solution" in err
    assert "--blank" in err
    assert not (out / "manual.html").exists()
    page = (out / "report.html").read_text()
    assert "the blank notebook's code does not count" not in page and "--blank" in page
    with pytest.raises(SystemExit):
        cli.main_batch([str(zip_path), str(subs), str(out), "--solution", str(tmp_path / "no")])


def test_the_folder_above_a_gradescope_export_is_refused(tmp_path, monkeypatch, capsys):
    from grading.batch import cli

    export = tmp_path / "download" / "assignment_123_export"
    for i in range(3):
        (export / f"submission_{i}").mkdir(parents=True)
        (export / f"submission_{i}" / "offline_rl.ipynb").write_text("{}")
    (export / inputs.METADATA).write_text("submission_0:\n  :submitters: []\n")
    with pytest.raises(ValueError, match=f"give that folder, {export}"):
        inputs.discover(tmp_path / "download")
    (export / inputs.METADATA).unlink()
    with pytest.raises(ValueError, match="3 submission_<id>/ folders"):
        inputs.discover(tmp_path / "download")
    zip_path, _ = _class(tmp_path, names=())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        cli.main_batch([str(zip_path), str(tmp_path / "empty"), str(tmp_path / "out")])
    assert stop.value.code == 2 and "holds no submission" in capsys.readouterr().err


def test_merge_refuses_missing_shards(tmp_path, monkeypatch, capsys):
    from grading.batch import cli

    zip_path, subs = _class(tmp_path, names=tuple("abcdefgh"))
    _stub_grader(monkeypatch, {"q1_x": 2.0})
    for k in range(3):
        argv = [str(zip_path), str(subs), str(tmp_path / f"s{k}"), "--shard", f"{k}/3"]
        cli.main_batch([*argv, "--no-progress"])
        assert json.loads((tmp_path / f"s{k}" / cli.SETTINGS).read_text())["shard"] == f"{k}/3"
    two = [str(tmp_path / "s0"), str(tmp_path / "s2")]
    with pytest.raises(SystemExit):
        cli.main_merge([*two, "--out", str(tmp_path / "m")])
    assert "missing 1/3" in capsys.readouterr().err
    assert cli.main_merge([*two, "--out", str(tmp_path / "m"), "--allow-partial"]) == 0
    assert "PARTIAL" in capsys.readouterr().err
    assert cli.main_merge([*two, str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    assert len(tables.read_grades(tmp_path / "all" / "grades.csv")) == 8


def test_the_run_says_when_plain_notebooks_are_not_in_the_canvas_csv(tmp_path, monkeypatch, capsys):
    from grading.batch import cli

    zip_path, subs = _class(tmp_path)
    _stub_grader(monkeypatch, {"q1_x": 2.0})
    assert cli.main_batch([str(zip_path), str(subs), str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "grades-canvas.csv: 2 of 2 submissions are NOT in it" in out
    lines = (tmp_path / "out" / "grades-canvas.csv").read_text().splitlines()
    assert len(lines) == 2  # header and Points Possible only: what the note warns of
    named = _row("x", {"q1_x": 2}, student={"name": "Ada", "sid": "1", "email": "a@x"})
    assert tables.canvas_note([named]) == ""


def test_manual_page_renders_markdown_and_says_when_a_notebook_could_not_be_read(tmp_path):
    rubric = {"13": {"title": "Question 13", "rubric": "A **good** answer names $\\alpha$."}}
    rows = [
        _row("good", {}, answers={"manual": {"13": "I *think* $\\alpha_t < 1$ <b>x</b>"}}),
        _row("blank", {}, answers={"manual": {"13": "_Type your answer here_"}}),
        _row("corrupt", {}, status="ungradable", answers={"unreadable": "not a valid notebook"}),
    ]
    report.write_manual(rows, tmp_path / "manual.html", rubric, anonymise=False)
    page = (tmp_path / "manual.html").read_text()
    assert "<em>think</em>" in page and "<strong>good</strong>" in page
    assert '<code class="math">\\alpha_t &lt; 1</code>' in page  # LaTeX kept as readable source
    assert "&lt;b&gt;x&lt;/b&gt;" in page  # raw HTML from a student is never HTML
    corrupt = page.split("<h3>corrupt</h3>")[1].split("</div></div>")[0]
    assert "could not be read" in corrupt and "not a valid notebook" in corrupt
    assert "no answer" in page.split("<h3>blank</h3>")[1].split("</div></div>")[0]
    assert "<h3>points</h3>&nbsp;" not in page


def test_a_corrupt_upload_is_marked_unreadable(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{ not json")
    sub = inputs.Submission("bad", tmp_path / "bad.ipynb", (tmp_path / "bad.ipynb",))
    assert answers.extract(sub)["unreadable"].startswith("not a valid notebook")


def test_sigterm_ends_the_graders_and_removes_the_temp_folders(tmp_path):
    """A batch cancelled by Slurm (SIGTERM) must leave no grader running and no student
    notebook in /tmp. The grader is a stand-in that writes its pid and sleeps."""
    import os
    import signal
    import subprocess
    import time

    zip_path, subs = _class(tmp_path)
    temp, pids = tmp_path / "tmp", tmp_path / "pids"
    temp.mkdir()
    pids.mkdir()
    fake = tmp_path / "fake_grader.py"
    fake.write_text(
        f"import os, time\nopen(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\n"
        "time.sleep(300)\n"
    )
    script = (
        "import sys\nfrom grading.batch import cli, run\n"
        f"run.GRADER = [sys.executable, {str(fake)!r}]\n"
        f"sys.exit(cli.main_batch([{str(zip_path)!r}, {str(subs)!r}, {str(tmp_path / 'out')!r},"
        " '--no-progress', '--jobs', '2']))\n"
    )
    env = {**os.environ, "TMPDIR": str(temp)}
    batch = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    graders = [int(p.name) for p in pids.iterdir()]
    assert len(graders) == 2, "the stand-in graders did not start"
    assert all(oct(p.stat().st_mode & 0o777) == "0o700" for p in temp.iterdir())
    batch.send_signal(signal.SIGTERM)
    try:
        assert batch.wait(timeout=30) == 128 + signal.SIGTERM
        for pid in graders:
            stat = Path(f"/proc/{pid}/stat")
            alive = stat.exists() and stat.read_text().split(") ")[1][0] != "Z"
            assert not alive, f"grader {pid} still runs"
    finally:  # on failure, do not leave the stand-ins sleeping
        for pid in graders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert list(temp.iterdir()) == []  # no batch-* folder holding a student's notebook
    assert not list((tmp_path / "out" / "submissions").glob("*/record.json"))  # rerun regrades


def test_cpu_seconds_are_each_graders_own_with_two_jobs(tmp_path, monkeypatch):
    """RUSAGE_CHILDREN is process-wide: with --jobs 2 a grading was charged its neighbour's CPU.
    A stand-in grader burns 0.5 CPU-s for 'busy' and sleeps (no CPU) for 'idle'."""
    from grading.batch import run

    zip_path, subs = _class(tmp_path, names=("busy", "idle"))
    fake = tmp_path / "fake_grader.py"
    fake.write_text(
        "import os, sys, time\n"
        "if os.path.exists(os.path.join(sys.argv[2], 'busy.ipynb')):\n"
        "    while time.process_time() < 0.5:\n        pass\n"
        "else:\n    time.sleep(1.5)\n"
    )
    monkeypatch.setattr(run, "GRADER", [sys.executable, str(fake)])
    out = tmp_path / "out"
    run.grade_all(zip_path, inputs.discover(subs), out, run.BatchConfig(jobs=2, progress=False))
    cpu = {
        name: json.loads((out / "submissions" / name / "record.json").read_text())["cpu_seconds"]
        for name in ("busy", "idle")
    }
    assert cpu["busy"] >= 0.5 and cpu["idle"] < 0.3, cpu


def test_small_things_the_ta_found(tmp_path, monkeypatch, capsys):
    """Word-boundary cuts on screen and full reasons in grades.csv, integer histogram ticks, an
    ungradable upload not counted as graded, a shard's summary naming its shard."""
    import matplotlib.pyplot as plt

    from grading.batch import cli, run

    reason = "Your submission could not be graded: " + "notebook " * 40 + "END"
    assert tables.shorten(reason, 60).endswith("notebook…") and len(tables.shorten(reason)) <= 200
    rows = [_row("bad", {}, status="ungradable", reason=reason)]
    tables.write_grades(rows, tmp_path / "grades.csv")
    assert tables.read_grades(tmp_path / "grades.csv")["bad"]["reason"].endswith("notebook END")
    fig = report.histogram_figure([1.0, 2.0, 2.0], 4.0)
    ticks = fig.axes[0].get_yticks()
    plt.close(fig)
    assert all(float(t).is_integer() for t in ticks), ticks

    def ungradable(sub, zip_path, out, grader_args):
        out.mkdir(parents=True, exist_ok=True)
        return {"status": "ungradable", "reason": reason, "wall_seconds": 1.0, "cpu_seconds": 1.0}

    monkeypatch.setattr(run, "grade_one", ungradable)
    zip_path, subs = _class(tmp_path, names=("a",))
    argv = [str(zip_path), str(subs), str(tmp_path / "out"), "--no-progress", "--shard", "0/1"]
    assert cli.main_batch(argv) == 1  # nothing could be graded
    out = capsys.readouterr().out
    assert "shard 0/1: 1 submissions: 0 graded now" in out and "1 could not be graded" in out
    assert "notebook notebook…" in out and "notebook END" not in out


def test_student_readme_matches_show_hidden():
    """With show_hidden false, students see per-question results only after grades are
    published: the student README must not promise them at once."""
    import re

    master = (ROOT / "assignments" / "offline_rl" / "master.py").read_text()
    show_hidden = re.search(r"^#\s+show_hidden:\s*(\w+)", master, re.M)
    assert show_hidden, "master.py declares no show_hidden"
    text = " ".join((ROOT / "assignments" / "offline_rl" / "README.student.md").read_text().split())
    if show_hidden.group(1).lower() == "false":
        assert "Your result lists, question by question, which hidden checks passed" not in text
        assert "appears when your instructor publishes the grades" in text


def test_blame_message_agrees_with_the_number_of_functions(monkeypatch):
    """'your `f` from q1, which fails hidden check c' (one function), '`f` / `g` ... fail'."""
    import importlib.util

    # A private copy of the module: no sys.path or sys.modules entry other tests could see.
    path = ROOT / "assignments" / "offline_rl" / "hidden_checks.py"
    spec = importlib.util.spec_from_file_location("_i21_hidden_checks", path)
    assert spec and spec.loader
    hidden_checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hidden_checks)

    def failing(decl, outputs, fx):
        raise AssertionError("wrong")

    for graded, verb in ((("f",), "which fails"), (("f", "g"), "which fail")):
        registry = {
            "dep": SimpleNamespace(name="dep", question="q1_x", graded=graded, uses=()),
            "late": SimpleNamespace(name="late", question="q2_y", graded=("h",), uses=("dep",)),
        }
        monkeypatch.setattr(hidden_checks, "load_declarations", lambda r=registry: r)
        monkeypatch.setattr(hidden_checks, "_compare_one", failing)
        with pytest.raises(AssertionError, match=f"{verb} hidden check dep"):
            hidden_checks.compare("late", {}, fixtures={})


def test_the_batch_puts_back_the_callers_signal_handlers(tmp_path, monkeypatch):
    import signal

    from grading.batch import cli

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    zip_path, subs = _class(tmp_path)
    _stub_grader(monkeypatch, {"q1_x": 2.0})
    cli.main_batch([str(zip_path), str(subs), str(tmp_path / "out"), "--no-progress"])
    assert {sig: signal.getsignal(sig) for sig in before} == before
