"""Gradescope's results.json: build it, check it against the documented format, write it.

Format: https://gradescope-autograders.readthedocs.io/en/latest/specs/ ("Output format").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

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
    """Write ``results.json`` atomically (a half-written file is worse than none)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "results.json"
    tmp = results_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
