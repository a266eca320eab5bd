"""Gradescope's results.json: build it, check it against the documented format, write it.

Format: https://gradescope-autograders.readthedocs.io/en/latest/specs/ ("Output format").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
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


def clean(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as a string safe to report: lone surrogates and invalid code points replaced
    (they made ``json``/UTF-8 encoding raise), control characters dropped (ANSI escapes
    included), at most ``limit`` characters."""
    text = text if isinstance(text, str) else str(text)
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


def write(results: dict[str, Any], results_dir: Path) -> Path:
    """Write ``results.json`` atomically, cleaned, into a folder only this user can use.

    The temporary file is created with ``O_EXCL`` under a random name and renamed over
    ``results.json``, so the file is always this process's own (a link planted at the final name
    is replaced, never followed) and a reader never sees half of it.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(sanitise(results), indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".tmp", dir=results_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # Gradescope's harness reads it; nothing in it is secret
        path = results_dir / "results.json"
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


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
