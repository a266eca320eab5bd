"""Grade submissions with ``python -m grading`` in subprocesses, in parallel, resumable.

Layout of OUT (one folder per submission, so shards can be merged by copying folders)::

    OUT/submissions/<id>/results.json   what the grader wrote (Gradescope's format)
    OUT/submissions/<id>/record.json    student, hashes, seconds, status, answers for the report
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grading.batch import answers
from grading.batch.inputs import Submission

#: A grading never legitimately takes longer: the grader's own hard deadline is 540 s.
GRADING_TIMEOUT = 900
RECORD = "record.json"
RESULTS = "results.json"
#: results.json outputs that mean the submission itself could not be graded (the student's fault).
UNGRADABLE_PREFIX = "Your submission could not be graded"
#: ... and those that mean the grader failed (never the student's fault).
GRADER_FAILED_PREFIXES = ("The autograder itself failed", "The autograder is misconfigured")


@dataclass(frozen=True)
class BatchConfig:
    """How ``python -m grading batch`` grades."""

    jobs: int
    """Gradings at once; each is one sandboxed kernel (about 0.5 GB and one core at its peak)."""
    force: bool = False
    """Grade again even where OUT already holds a result for the same submission and zip."""
    grader_args: tuple[str, ...] = ()
    """Extra arguments for ``python -m grading`` (e.g. ``--jail require``)."""
    progress: bool = True
    """Show a progress bar with the ETA (on stderr)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resume_key(submission_sha: str, zip_sha: str) -> str:
    """What makes a stored result reusable: the same upload graded by the same autograder."""
    return hashlib.sha256(f"{submission_sha}:{zip_sha}".encode()).hexdigest()


def status_of(results: dict[str, Any] | None) -> tuple[str, str]:
    """(status, reason) of a grading: ``graded``, ``ungradable`` (the upload) or ``error``."""
    if results is None:
        return "error", "the grader wrote no results.json"
    output = str(results.get("output", ""))
    if output.startswith(UNGRADABLE_PREFIX):
        return "ungradable", output
    if output.startswith(GRADER_FAILED_PREFIXES):
        return "error", output
    return "graded", ""


def _stage(sub: Submission, folder: Path) -> None:
    """Copy the upload into ``folder`` (the grader chmods and reads its input: never the
    originals)."""
    folder.mkdir(parents=True)
    for path in sub.files:
        target = folder / sub.relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def grade_one(
    sub: Submission, zip_path: Path, out: Path, grader_args: tuple[str, ...]
) -> dict[str, Any]:
    """Grade one submission into ``out`` (its own folder) and return its record.

    Never raises for a bad submission: whatever happens, a record with a status is written.
    """
    start_wall, start_cpu = time.monotonic(), _children_cpu()
    with tempfile.TemporaryDirectory(prefix="batch-") as tmp:
        src, upload, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(src)
        _stage(sub, upload)
        cmd = [sys.executable, "-m", "grading", str(src), str(upload), str(res), *grader_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        stderr = ""
        try:
            proc = subprocess.run(
                cmd, cwd=src, env=env, capture_output=True, text=True, timeout=GRADING_TIMEOUT
            )
            stderr = proc.stderr
        except subprocess.TimeoutExpired:
            stderr = f"the grader did not finish in {GRADING_TIMEOUT} s"
        results = None
        if (res / RESULTS).is_file():
            try:
                results = json.loads((res / RESULTS).read_text())
            except (OSError, ValueError) as err:
                stderr += f"\nresults.json unreadable: {err}"
        out.mkdir(parents=True, exist_ok=True)
        if results is not None:
            (out / RESULTS).write_text(json.dumps(results, indent=1, sort_keys=True))
        else:
            (out / RESULTS).unlink(missing_ok=True)
    status, reason = status_of(results)
    if status == "error" and stderr.strip():
        reason += " | grader said: " + stderr.strip().splitlines()[-1][:300]
    return {
        "status": status,
        "reason": reason,
        "wall_seconds": round(time.monotonic() - start_wall, 2),
        "cpu_seconds": round(_children_cpu() - start_cpu, 2),
    }


def _children_cpu() -> float:
    """CPU seconds (user + sys) of finished child processes: the load-independent cost of a
    grading. With several jobs at once it mixes their children, so per-grading figures are exact
    only with ``--jobs 1``; the run's total is exact either way."""
    usage = os.times()
    return usage.children_user + usage.children_system


def _record(sub: Submission, key: str, sub_sha: str, zip_sha: str) -> dict[str, Any]:
    return {
        "id": sub.id,
        "source": str(sub.source),
        "files": [sub.relative(p) for p in sub.files],
        "student": asdict(sub.student),
        "submission_sha256": sub_sha,
        "content_sha256": sub.content_sha256(),
        "autograder_sha256": zip_sha,
        "key": key,
        "answers": answers.extract(sub),
    }


def load_record(folder: Path) -> dict[str, Any] | None:
    """The stored record of a submission folder, or None."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def grade_all(
    zip_path: Path,
    submissions: list[Submission],
    out: Path,
    config: BatchConfig,
    on_done: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Grade every submission not already graded by this zip into ``out/submissions/<id>/``.

    Returns counts: ``graded`` (run now), ``reused`` (resumed), ``failed`` (status not graded).
    """
    zip_sha = sha256_file(zip_path)
    base = out / "submissions"
    base.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[Submission, dict[str, Any]]] = []
    counts = {"graded": 0, "reused": 0, "failed": 0}
    for sub in submissions:
        try:
            sub_sha = sub.sha256()
        except OSError as err:  # unreadable upload: reported, never graded
            record = {**_record_unreadable(sub, zip_sha), "reason": f"cannot read it: {err}"}
            _write_record(base / sub.id, record)
            counts["failed"] += 1
            continue
        key = resume_key(sub_sha, zip_sha)
        old = load_record(base / sub.id)
        if not config.force and old and old.get("key") == key and "status" in old:
            counts["reused"] += 1
            continue
        todo.append((sub, _record(sub, key, sub_sha, zip_sha)))
    if not todo:
        return counts
    # Identical uploads (same names and bytes) are graded once: the grader is deterministic for
    # a given upload and zip, so the copies get the same results.
    copies: dict[str, list[tuple[Submission, dict[str, Any]]]] = {}
    for sub, record in todo:
        copies.setdefault(record["key"], []).append((sub, record))
    bar = _progress(len(todo), config.progress)
    with ThreadPoolExecutor(max_workers=max(1, config.jobs)) as pool:
        futures = {
            pool.submit(
                grade_one, group[0][0], zip_path, base / group[0][0].id, config.grader_args
            ): group
            for group in copies.values()
        }
        for future in as_completed(futures):
            group = futures[future]
            try:
                outcome = future.result()
            except Exception as err:  # a batch bug must not stop the others
                outcome = {"status": "error", "reason": f"batch error: {err!r}"}
            first = base / group[0][0].id
            for sub, record in group:
                if sub is not group[0][0] and (first / RESULTS).is_file():
                    (base / sub.id).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(first / RESULTS, base / sub.id / RESULTS)
                record.update(outcome)
                _write_record(base / sub.id, record)
                counts["graded"] += 1
                counts["failed"] += record["status"] != "graded"
                if on_done:
                    on_done(sub.id, record)
                bar.set_postfix_str(f"{sub.id}: {record['status']}", refresh=False)
                bar.update(1)
    bar.close()
    return counts


def _record_unreadable(sub: Submission, zip_sha: str) -> dict[str, Any]:
    return {
        "id": sub.id,
        "source": str(sub.source),
        "files": [],
        "student": asdict(sub.student),
        "submission_sha256": "",
        "autograder_sha256": zip_sha,
        "key": "",
        "answers": {},
        "status": "ungradable",
        "wall_seconds": 0.0,
        "cpu_seconds": 0.0,
    }


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(folder / RECORD)  # atomic: an interrupted run leaves the old record or the new


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="sub", desc="grading", disable=not enabled, smoothing=0.1)
