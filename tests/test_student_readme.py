"""The students' README says what each question is worth and which are graded by hand, from the
master's own declarations (``points:``, ``manual: true``), so it never disagrees with them: the
student reviewer saw "35 / 35" on Gradescope and nothing saying Q13 and Q14 come on top."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_release  # noqa: E402

NAME = "offline_rl"


def _points() -> dict[str, build_release.QuestionPoints]:
    return build_release.question_points(jupytext.read(ROOT / "assignments" / NAME / "master.py"))


def test_the_points_section_names_every_question_and_the_hand_graded_ones():
    points = _points()
    manual = [q for q in points.values() if q.manual]
    assert manual, "the master declares no manually graded question"
    section = build_release.student_points_section(points)
    auto = sum(q.points for q in points.values() if not q.manual)
    total = sum(q.points for q in points.values())
    assert f"worth {total:g} points: {auto:g} autograded" in section, section
    assert f"autograded questions only (at most {auto:g})" in section, section
    row = r"^\| (Q\d+) \| ([\d.]+) \| (?:by hand|by the autograder)"
    rows = dict(re.findall(row, section, re.M))
    assert rows == {q.name.split("_")[0].upper(): f"{q.points:g}" for q in points.values()}
    for q in manual:
        label = q.name.split("_")[0].upper()
        assert f"| {label} | {q.points:g} | by hand" in section, (label, section)


def test_the_released_students_readme_ends_with_the_points_section(fresh_release):
    readme = (fresh_release / "student_release" / NAME / "README.md").read_text()
    assert readme.endswith(build_release.student_points_section(_points())), readme[-800:]
    assert "graded by hand" in readme
