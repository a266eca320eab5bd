"""Shared test helpers, and the banner that says when sandboxed grading tests were skipped."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import open_sandbox_paths

#: Every skip that require_root() makes starts with this, so the summary can count them.
SANDBOX_SKIP = "sandboxed grading skipped"
#: The one command that runs what a non-root (or unprepared) run skipped.
RUN_THEM = "sudo make test"


@pytest.fixture(scope="session")
def grade_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """``corpus.grade_once`` bound to this run's cache: one grading per submission per run.

    With pytest-xdist each worker's base temp is ``<run>/popen-gwN``, so their common parent is
    this run's alone; never a folder that outlives the run (a stale grading would hide a change).
    """
    from tests.corpus import corpus

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "gradings"
    cache.mkdir(exist_ok=True)
    return functools.partial(corpus.grade_once, cache)


def require_root() -> None:
    """The grader sandboxes the kernel as another user, which needs root (as on Gradescope).

    Off CI a non-root run skips (and the run ends with a banner); with CI set a missing
    capability is a failure, never a skip.
    """
    message = None
    if os.geteuid() != 0:
        message = "needs root (the kernel runs as an unprivileged user)"
    else:
        blocked = open_sandbox_paths.closed_folders()
        if blocked:
            message = (
                f"the sandbox user cannot reach Python: {', '.join(blocked)} lack the o+x bit; "
                "run `make test` (or `python tools/open_sandbox_paths.py`) as root"
            )
    if message:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(f"{SANDBOX_SKIP}: {message}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter,
) -> Generator[None, None, None]:
    """End a run that skipped sandboxed grading tests loudly: a green row of `s` tests less."""
    yield  # after pytest's own summary (the -ra list of skips), just above the closing line
    # Figures that tests report with record_property("measured", ...): shown even under xdist,
    # which swallows a passing test's prints.
    measured = [
        f"{report.nodeid.split('::')[-1]}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "measured"
    ]
    if measured:
        terminalreporter.write_sep("-", "measured")
        for line in measured:
            terminalreporter.write_line(line)
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if SANDBOX_SKIP in str(report.longrepr)
    ]
    if not skipped:
        return
    reasons = sorted({str(r.longrepr[2]).split(f"{SANDBOX_SKIP}: ", 1)[-1] for r in skipped})
    style = {"red": True, "bold": True}
    terminalreporter.write_line("!" * 78, **style)
    terminalreporter.write_line(
        f"!! {len(skipped)} sandboxed grading tests were SKIPPED: this run did not test grading.",
        **style,
    )
    for reason in reasons:
        terminalreporter.write_line(f"!! why: {reason}", **style)
    terminalreporter.write_line(f"!! Run every test, these included:  {RUN_THEM}", **style)
    terminalreporter.write_line("!" * 78, **style)
