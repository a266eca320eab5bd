"""Gradescope's results.json: build it, check it against the documented format, write it.

Format: https://gradescope-autograders.readthedocs.io/en/latest/specs/ ("Output format").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

#: Characters kept of any one string in the report (Gradescope shows each test's output whole).
MAX_TEXT = 20_000
#: C0/C1 control characters except tab and newline, and DEL: a student's text is shown as text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}
FORMATS = {"text", "html", "simple_format", "md", "ansi"}
TOP_KEYS = {
    "score",
    "execution_time",
    "output",
    "output_format",
    "test_output_format",
    "test_name_format",
    "visibility",
    "stdout_visibility",
    "extra_data",
    "tests",
    "leaderboard",
}
TEST_KEYS = {
    "score",
    "max_score",
    "status",
    "name",
    "name_format",
    "number",
    "output",
    "output_format",
    "tags",
    "visibility",
    "extra_data",
}


def _numpy_scalar(value: Any, dtype: Any, chars: int) -> object:
    """A 0-d numpy array's scalar; of a bytes or str one only the first ``chars`` characters,
    read through a view (``.item()`` would copy all of it first)."""
    import numpy as np  # only here: the report's writer needs no numpy otherwise

    if dtype.kind == "S":
        return value.reshape(1).view(np.uint8)[:chars].tobytes().rstrip(b"\0")
    if dtype.kind == "U":
        order = dtype.byteorder if dtype.byteorder in "<>" else "="
        codes = value.reshape(1).view(np.dtype("u4").newbyteorder(order))[:chars]
        return codes.astype("<u4").tobytes().decode("utf-32-le", "replace").rstrip("\0")
    return value.item()


def _bounded_str(value: object, chars: int) -> str:
    """``str(value)`` without building more than about ``chars`` characters where the value is
    large: bytes and strings (numpy 0-d arrays of them included) are cut before they become
    text. str() of a 60 MB bytes array built a ~630 MB repr (MemoryError: the whole report
    failed)."""
    dtype = getattr(value, "dtype", None)
    if getattr(value, "ndim", None) == 0 and dtype is not None:
        value = _numpy_scalar(value, dtype, chars)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value[:chars]).decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:chars]
    if getattr(value, "size", 0) > chars:  # a large array: its summary, never its elements
        return f"<array of {value.size} items>"  # type: ignore[attr-defined]
    return str(value)


def clean(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as a string safe to report: lone surrogates and invalid code points replaced
    (they made ``json``/UTF-8 encoding raise), control characters dropped (ANSI escapes
    included), at most ``limit`` characters."""
    text = text if isinstance(text, str) else _bounded_str(text, limit * 4)
    text = text[: limit * 2].encode("utf-8", "replace").decode("utf-8", "replace")
    text = _CONTROL.sub("", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sanitise(value: Any) -> Any:
    """A copy of a results structure with every string cleaned (keys included)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k, 200): sanitise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitise(v) for v in value]
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate(results: dict[str, Any]) -> list[str]:
    """Every way ``results`` breaks Gradescope's format (empty list: valid)."""
    problems = [f"unknown top-level key {k!r}" for k in results if k not in TOP_KEYS]
    tests = results.get("tests", [])
    if "score" not in results and not all("score" in t for t in tests):
        problems.append("no top-level score and a test without a score")
    if "score" in results and not _number(results["score"]):
        problems.append(f"score must be a finite number, got {results['score']!r}")
    if "execution_time" in results and not _number(results["execution_time"]):
        problems.append("execution_time must be a number")
    for key in ("visibility", "stdout_visibility"):
        if key in results and results[key] not in VISIBILITY:
            problems.append(f"{key} must be one of {sorted(VISIBILITY)}, got {results[key]!r}")
    for key in ("output_format", "test_output_format", "test_name_format"):
        if key in results and results[key] not in FORMATS:
            problems.append(f"{key} must be one of {sorted(FORMATS)}")
    for key in ("output",):
        if key in results and not isinstance(results[key], str):
            problems.append("output must be a string")
    if not isinstance(tests, list):
        return [*problems, "tests must be a list"]
    for i, test in enumerate(tests):
        where = f"tests[{i}] ({test.get('name', '?')})"
        problems += [f"{where}: unknown key {k!r}" for k in test if k not in TEST_KEYS]
        for key in ("score", "max_score"):
            if key in test and not _number(test[key]):
                problems.append(f"{where}: {key} must be a finite number")
        scored = _number(test.get("score")) and _number(test.get("max_score"))
        if scored and not 0 <= test["score"] <= test["max_score"] + 1e-9:
            problems.append(f"{where}: score outside [0, max_score]")
        if "status" in test and test["status"] not in {"passed", "failed"}:
            problems.append(f"{where}: status must be 'passed' or 'failed'")
        if "visibility" in test and test["visibility"] not in VISIBILITY:
            problems.append(f"{where}: visibility {test['visibility']!r} not allowed")
        for key in ("name", "output", "number"):
            if key in test and not isinstance(test[key], str):
                problems.append(f"{where}: {key} must be a string")
    return problems


#: Bytes set aside for results.json when a run starts, so that a disk another process filled
#: meanwhile cannot cost the run its report (the solution's report is ~10 kB).
RESERVED_BYTES = 2 * 2**20


class ResultsFile:
    """results.json of one run, its space reserved up front.

    ``__init__`` opens the results folder without following any link another user could have
    planted (grading.paths.open_dir, created if missing), creates a temporary file in it with
    ``O_EXCL | O_NOFOLLOW`` under a random name and allocates RESERVED_BYTES. ``write`` fills it
    and renames it over ``results.json``: the file is always this process's own (a link planted
    at the final name is replaced, never followed), a reader never sees half of it, and a full
    disk cannot stop it.
    """

    def __init__(self, results_dir: Path) -> None:
        from grading.paths import open_dir

        self.dir_fd = open_dir(results_dir, create=True)
        self.path = Path(results_dir) / "results.json"
        self._tmp = f".results-{secrets.token_hex(8)}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd: int | None = os.open(self._tmp, flags, 0o600, dir_fd=self.dir_fd)
        with contextlib.suppress(OSError):  # a file system without fallocate: no reservation
            os.posix_fallocate(self._fd, 0, RESERVED_BYTES)

    def write(self, results: dict[str, Any]) -> Path:
        """Write ``results`` (cleaned) and put the file in place; only once."""
        assert self._fd is not None, "results already written"
        data = (json.dumps(sanitise(results), indent=2, ensure_ascii=False) + "\n").encode()
        fd, self._fd = self._fd, None
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            os.fchmod(fd, 0o644)  # Gradescope's harness reads it; nothing in it is secret
            os.replace(self._tmp, "results.json", src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self.dir_fd)
            raise
        finally:
            os.close(fd)
        return self.path

    def close(self) -> None:
        """Drop the reservation if nothing was written (the folder's fd is closed either way)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self.dir_fd)
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def write(results: dict[str, Any], results_dir: Path) -> Path:
    """Write ``results.json`` into ``results_dir`` now (see ResultsFile)."""
    out = ResultsFile(results_dir)
    try:
        return out.write(results)
    finally:
        out.close()


def check_file(path: Path) -> list[str]:
    """Every reason ``path`` is not a results.json to hand Gradescope (empty list: it is)."""
    try:
        info = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path):
            return [f"{path} is not a regular file"]
        if info.st_uid != os.geteuid():
            return [f"{path} belongs to uid {info.st_uid}, not to the grader"]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [f"{path} cannot be read as JSON: {err}"]
    if not isinstance(data, dict):
        return ["results.json is not a JSON object"]
    return validate(data)


if __name__ == "__main__":
    # ``python -m grading.results PATH``: run_autograder's last look at what it hands Gradescope.
    import sys

    found = check_file(Path(sys.argv[1]))
    print("\n".join(found) or "results.json is valid", file=sys.stderr)
    raise SystemExit(1 if found else 0)
