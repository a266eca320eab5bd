"""The autograder as Gradescope runs it, and the same score every time.

* Harness: the zip laid out under /autograder exactly as Gradescope does (source/, submission/,
  results/, submission_metadata.json, run_autograder at the top), this environment standing in
  for the image; results.json must satisfy Gradescope's documented format. /autograder is left
  as it was found (moved aside and restored if it existed).
* Determinism: one submission graded twice side by side (repeatability under concurrency), then
  with the hidden checks in reverse order beside a run with a different thread count in the
  grader's environment, gives identical results. Four gradings, two at a time: each property has
  its own run and its own message (the test once graded seven times, five of them plain repeats
  that showed nothing a second repeat does not).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from grading import results as gs
from tests.conftest import require_root
from tests.corpus import corpus

pytestmark = [pytest.mark.grading, pytest.mark.slow]

AUTOGRADER = Path("/autograder")
METADATA = {
    "id": 123456,
    "created_at": "2026-11-26T10:00:00.000000-08:00",
    "assignment": {
        "due_date": "2026-12-01T23:59:00.000000-08:00",
        "group_size": 1,
        "group_submission": False,
        "id": 25828,
        "course_id": 1,
        "late_due_date": None,
        "release_date": "2026-11-20T00:00:00.000000-08:00",
        "title": "Offline Reinforcement Learning",
        "total_points": "",  # filled in from the release: corpus.total_points()
    },
    "submission_method": "upload",
    "users": [{"email": "student@example.edu", "id": 1234, "name": "Student User"}],
    "previous_submissions": [],
}


@pytest.fixture
def autograder_dir():
    require_root()
    backup = None
    if AUTOGRADER.exists():
        backup = AUTOGRADER.with_name(f"autograder.saved-by-tests-{os.getpid()}")
        AUTOGRADER.rename(backup)
    try:
        yield AUTOGRADER
    finally:
        shutil.rmtree(AUTOGRADER, ignore_errors=True)
        if backup is not None:
            backup.rename(AUTOGRADER)


def _run_harness(
    root: Path, notebook_bytes: bytes, break_grader: bool = False
) -> tuple[dict, subprocess.CompletedProcess]:
    lay_out_autograder(root, notebook_bytes, break_grader)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }
    proc = subprocess.run(
        [str(root / "run_autograder")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = root / "results" / "results.json"
    assert path.exists(), f"no results.json:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(path.read_text()), proc


def lay_out_autograder(root: Path, notebook_bytes: bytes, break_grader: bool = False) -> None:
    """The zip and one submission laid out under ``root`` as Gradescope does."""
    if root.exists():
        shutil.rmtree(root)
    (root / "source").mkdir(parents=True)
    with zipfile.ZipFile(corpus.ZIP) as zf:
        zf.extractall(root / "source")
    # Gradescope keeps the zip's permission bits; extractall does not, so restore them.
    for name in ("run_autograder", "setup.sh"):
        os.chmod(root / "source" / name, 0o755)
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
    if break_grader:  # e.g. an image whose environment failed to build
        (root / "source" / "grading" / "runner.py").write_text("raise ImportError('broken image')")
    (root / "submission").mkdir()
    (root / "submission" / f"{corpus.ASSIGNMENT}.ipynb").write_bytes(notebook_bytes)
    (root / "results").mkdir()
    metadata = {**METADATA, "assignment": dict(METADATA["assignment"])}
    metadata["assignment"]["total_points"] = f"{corpus.total_points():.1f}"
    (root / "submission_metadata.json").write_text(json.dumps(metadata))


# /autograder and run_autograder's default sandbox uid: one such test at a time (test_image.py).
@pytest.mark.xdist_group("autograder")
def test_run_autograder_in_the_gradescope_layout(autograder_dir):
    solution = nbformat.writes(corpus.solution()).encode()
    results, proc = _run_harness(autograder_dir, solution)
    assert gs.validate(results) == [], gs.validate(results)
    assert results["score"] == corpus.total_points(), (results["output"], proc.stderr[-2000:])
    assert {t["visibility"] for t in results["tests"]} <= gs.VISIBILITY
    assert all(isinstance(t["output"], str) for t in results["tests"])
    assert 0 < results["execution_time"] < 600
    # Red team rt9: Gradescope's metadata (earlier results, hidden messages included) is root's.
    metadata = autograder_dir / "submission_metadata.json"
    assert metadata.stat().st_mode & 0o077 == 0, oct(metadata.stat().st_mode)

    results, _ = _run_harness(autograder_dir, b"{ not json")
    assert gs.validate(results) == [] and results["score"] == 0
    assert "not a valid notebook" in results["output"]

    # Even a grader that cannot start leaves a score, not an empty Gradescope result.
    results, _ = _run_harness(autograder_dir, solution, break_grader=True)
    assert gs.validate(results) == [] and results["score"] == 0
    assert "could not start" in results["output"]


def test_validator_rejects_what_gradescope_rejects():
    good = {"score": 1.0, "tests": [{"name": "q1", "score": 1.0, "max_score": 1.0}]}
    assert gs.validate(good) == []
    bad = [
        {"score": float("nan"), "tests": []},
        {"score": 1.0, "visibility": "students"},
        {"score": 1.0, "tests": [{"name": "q1", "score": 2.0, "max_score": 1.0}]},
        {"score": 1.0, "tests": [{"name": "q1", "score": 1, "max_score": 1, "status": "ok"}]},
        {"score": 1.0, "tests": [{"name": "q1", "output": 3}]},
        {"tests": [{"name": "q1"}]},
        {"score": 1.0, "stdout": "x"},
    ]
    for results in bad:
        assert gs.validate(results), f"accepted {results}"


def _without_timing(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "execution_time"}


@pytest.mark.early
def test_same_submission_same_score_and_messages():
    require_root()
    mutant = next(m for m in corpus.load_mutants() if m.name == "cql_loss_online_target")
    nb = corpus.apply(corpus.solution(), mutant)
    nb = corpus.insert_cell(nb, 'raise RuntimeError("left-over debugging")', after="def bc_loss(")
    # (what the run shows, grader arguments, extra environment); pool.map keeps this order, and
    # its two workers grade the first two side by side.
    runs = [
        ("run 1", (), {}),
        ("a second identical run", (), {}),
        ("the run with the hidden checks in reverse order", ("--reverse-checks",), {}),
        ("the run with 2 BLAS threads", (), {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
    ]
    uids: queue.Queue[int] = queue.Queue()
    for uid in (61_310, 61_311):
        uids.put(uid)

    def grade(run: tuple) -> dict:
        _what, args, env = run
        uid = uids.get()
        try:
            return corpus.grade(nb, uid=uid, extra_args=args, env_extra=env)
        finally:
            uids.put(uid)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [_without_timing(r) for r in pool.map(grade, runs)]
    first = results[0]
    assert first["score"] < corpus.total_points() and "left-over debugging" in json.dumps(first)
    for (what, _args, _env), other in zip(runs[1:], results[1:]):
        diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        assert other == first, f"{what} differs from run 1 in {diff}"
