"""The test harness itself: skipped grading tests are announced, each submission is graded once
per run, and parallel workers never share a sandbox user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from tests import conftest
from tests.corpus import corpus

ROOT = Path(__file__).resolve().parents[1]


def test_non_root_run_ends_with_a_banner_naming_the_skips_and_the_command(tmp_path):
    test_file = tmp_path / "test_pretend_non_root.py"
    test_file.write_text(
        "import os\n"
        "from tests.conftest import require_root\n"
        "os.geteuid = lambda: 1000  # as a normal user\n"
        "def test_a():\n    require_root()\n"
        "def test_b():\n    require_root()\n"
        "def test_c():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", str(test_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "2 sandboxed grading tests were SKIPPED" in out, out
    assert conftest.RUN_THEM in out, out
    # The banner comes after pytest's list of skips, just above the closing line.
    lines = out.strip().splitlines()
    assert "1 passed, 2 skipped" in lines[-1], lines[-1]
    assert conftest.RUN_THEM in "\n".join(lines[-4:]), lines[-4:]


def test_with_ci_set_a_missing_capability_fails_instead(tmp_path):
    test_file = tmp_path / "test_pretend_non_root.py"
    test_file.write_text(
        "import os\nfrom tests.conftest import require_root\nos.geteuid = lambda: 1000\n"
        "def test_a():\n    require_root()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | {"CI": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", str(test_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout


def test_each_submission_is_graded_once_per_run(tmp_path, monkeypatch):
    calls = []

    def fake_grade(nb, *, files=None, extra_args=()):
        calls.append((nb is None, tuple(sorted(files or {})), extra_args))
        return {"score": float(len(calls))}

    monkeypatch.setattr(corpus, "grade", fake_grade)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 2")])
    first = corpus.grade_once(tmp_path, nb)
    assert corpus.grade_once(tmp_path, nb) == first, "a second request must reuse the grading"
    assert corpus.grade_once(tmp_path, other) != first
    assert corpus.grade_once(tmp_path, nb, extra_args=("--cell-timeout", "6")) != first
    assert corpus.grade_once(tmp_path, None, files={"a.zip": b"1"}) != first
    assert corpus.grade_once(tmp_path, None, files={"a.zip": b"2"}) != first
    assert len(calls) == 5, calls
