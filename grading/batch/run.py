"""Grade submissions with ``python -m grading`` in subprocesses, in parallel, resumable.

Layout of OUT (one folder per submission, so shards can be merged by copying folders)::

    OUT/submissions/<id>/results.json   what the grader wrote (Gradescope's format)
    OUT/submissions/<id>/record.json    student, hashes, seconds, status, answers for the report
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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


#: The grader a batch runs (a list, so tests can put a stand-in here).
GRADER = [sys.executable, "-m", "grading"]
#: After SIGTERM/SIGINT: seconds the graders get to clean up (the grader removes its scratch and
#: sandbox on SIGTERM) before they are killed.
STOP_GRACE_SECONDS = 10.0


class StoppedError(Exception):
    """The batch was told to stop (SIGTERM, SIGINT): nothing more is graded or recorded."""


class _Live:
    """The graders running now and the batch's temp folders, so a signal can end and remove
    them (a cancelled Slurm job must not leave students' notebooks in /tmp)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen[str]] = set()
        self.temps: set[Path] = set()
        self.stopping = threading.Event()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Terminate every grader, wait up to ``grace`` seconds, kill the rest, remove the temps."""
        self.stopping.set()
        with self.lock:
            procs, temps = list(self.procs), list(self.temps)
        # The worker threads reap their own graders (for the CPU figure), so here only signals
        # are sent, to graders not reaped yet (returncode None), and their end is awaited.
        self._signal(procs, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(p.returncode is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal(procs, signal.SIGKILL)
        while any(p.returncode is None for p in procs) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)

    @staticmethod
    def _signal(procs: list[subprocess.Popen[str]], sig: int) -> None:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)


LIVE = _Live()


def install_signal_handlers() -> dict[int, Any]:
    """On SIGTERM (Slurm's cancel) or SIGINT (Ctrl-C): end the graders, remove the temp folders,
    exit 128 + signal. Records are written only for finished gradings, so a rerun resumes.
    Returns the previous handlers, for ``restore_signal_handlers``."""

    def handler(signum: int, _frame: object) -> None:
        print(f"batch: got signal {signum}: stopping the graders and removing temp folders",
              file=sys.stderr)  # fmt: skip
        LIVE.stop()
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    """Put back what ``install_signal_handlers`` replaced (the batch may run inside a caller)."""
    for sig, old in previous.items():
        signal.signal(sig, old)


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
    if LIVE.stopping.is_set():
        raise StoppedError
    start_wall = time.monotonic()
    # mkdtemp makes it 0700: it holds a student's notebook.
    with tempfile.TemporaryDirectory(prefix="batch-", ignore_cleanup_errors=True) as tmp:
        with LIVE.lock:
            LIVE.temps.add(Path(tmp))
        src, upload, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(src)
        _stage(sub, upload)
        cmd = [*GRADER, str(src), str(upload), str(res), *grader_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        stderr, cpu = _run_grader(cmd, src, env)
        if LIVE.stopping.is_set():
            raise StoppedError  # a grader ended by the signal: no result, the rerun grades it
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
    with LIVE.lock:
        LIVE.temps.discard(Path(tmp))
    return {
        "status": status,
        "reason": reason,
        "wall_seconds": round(time.monotonic() - start_wall, 2),
        "cpu_seconds": round(cpu, 2),
    }


def _run_grader(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    """Run one grader; returns (its stderr, its CPU seconds).

    The CPU figure is this child's own (user + sys of it and the processes it waited for), from
    ``os.wait4`` on its pid: process-wide ``RUSAGE_CHILDREN`` would mix the gradings that run at
    once with ``--jobs`` > 1.
    """
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    with LIVE.lock:
        LIVE.procs.add(proc)
    chunks: list[str] = []
    assert proc.stderr is not None
    stream = proc.stderr
    reader = threading.Thread(target=lambda: chunks.append(stream.read()), daemon=True)
    reader.start()
    note, deadline = "", time.monotonic() + GRADING_TIMEOUT
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                note = f"the grader did not finish in {GRADING_TIMEOUT} s"
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    finally:
        with LIVE.lock:
            LIVE.procs.discard(proc)
    reader.join(timeout=5)
    stream.close()
    return note or "".join(chunks), usage.ru_utime + usage.ru_stime


def _record(
    sub: Submission, key: str, sub_sha: str, zip_sha: str, notebook: str = ""
) -> dict[str, Any]:
    """What is known of an upload before its grading (``answers.extract`` never raises)."""
    return {
        "id": sub.id,
        "source": str(sub.source),
        "files": [sub.relative(p) for p in sub.files],
        "student": asdict(sub.student),
        "submission_sha256": sub_sha,
        "content_sha256": sub.content_sha256(),
        "autograder_sha256": zip_sha,
        "key": key,
        "answers": answers.extract(sub, prefer=notebook),
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

    Returns counts: ``graded`` (graded now, status graded), ``reused`` (resumed), ``failed``
    (run now but ungradable or an error), ``retried`` (of those run now: resumed records whose
    status was ``error``, the grader's own failure, which a rerun may not repeat; an
    ``ungradable`` record is the upload's fault and is reused like a grade).
    """
    zip_sha = sha256_file(zip_path)
    notebook = f"{answers.assignment_name(zip_path)}.ipynb"  # the name the grader prefers
    base = out / "submissions"
    base.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[Submission, dict[str, Any]]] = []
    counts = {"graded": 0, "reused": 0, "failed": 0, "retried": 0}
    for sub in submissions:
        try:
            sub.check_size()
            sub_sha = sub.sha256()
            key = resume_key(sub_sha, zip_sha)
            old = load_record(base / sub.id)
            if not config.force and old and old.get("key") == key and "status" in old:
                if old["status"] != "error":
                    counts["reused"] += 1
                    continue
                counts["retried"] += 1
            record = _record(sub, key, sub_sha, zip_sha, notebook)
        except Exception as err:  # one upload the batch cannot read is its row, never the end
            _write_record(base / sub.id, _record_unreadable(sub, zip_sha, err))
            counts["failed"] += 1
            continue
        todo.append((sub, record))
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
            except StoppedError:
                raise
            except Exception as err:  # a batch bug must not stop the others
                outcome = {"status": "error", "reason": f"batch error: {err!r}"}
            first = base / group[0][0].id
            for sub, record in group:
                if sub is not group[0][0] and (first / RESULTS).is_file():
                    (base / sub.id).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(first / RESULTS, base / sub.id / RESULTS)
                record.update(outcome)
                _write_record(base / sub.id, record)
                # "graded" counts only real gradings: an ungradable upload is a failure.
                counts["graded"] += record["status"] == "graded"
                counts["failed"] += record["status"] != "graded"
                if on_done:
                    on_done(sub.id, record)
                bar.set_postfix_str(f"{sub.id}: {record['status']}", refresh=False)
                bar.update(1)
    bar.close()
    return counts


def _record_unreadable(sub: Submission, zip_sha: str, err: Exception) -> dict[str, Any]:
    """The record of an upload the batch could not read (too big, unreadable file...)."""
    if isinstance(err, ValueError):  # Submission.check_size: its message says what to do
        why = str(err)
    else:
        why = (f"{type(err).__name__}: {str(err)[:200]}; check that the file is complete and "
               "readable (download it again) and run the batch again")  # fmt: skip
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
        "reason": f"the batch cannot read this upload: {why}",
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
