"""Shared test helpers, and the banner that says when sandboxed grading tests were skipped."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import open_sandbox_paths

ROOT = Path(__file__).resolve().parents[1]

# As in grading/__init__.py and the notebook's set-up cell: jsonschema (under nbformat) compiles
# a grammar for its optional IRI format at import, ~1.9 CPU-s per pytest worker, for a format no
# notebook field uses. Set before any test module imports nbformat.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

#: Every skip that require_root() makes starts with this, so the summary can count them.
SANDBOX_SKIP = "sandboxed grading skipped"
#: The one command that runs what a non-root (or unprepared) run skipped.
RUN_THEM = "sudo make test"


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test run shared by its xdist workers, and never one that outlives the
    run (stale results would hide a change): each worker's base temp is ``<run>/popen-gwN``."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def grade_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """``corpus.grade_once`` bound to this run's cache: one grading per submission per run."""
    from tests.corpus import corpus

    cache = _run_folder(tmp_path_factory) / "gradings"
    cache.mkdir(exist_ok=True)
    return functools.partial(corpus.grade_once, cache)


@pytest.fixture(scope="session")
def fresh_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release rebuilt from the masters and reference/ (without otter's self-check) into a
    folder of this run; built once per run, shared by the xdist workers. Read it, never write."""
    root = _run_folder(tmp_path_factory)
    out, done = root / "fresh-release", root / "fresh-release.done"
    with open(root / "fresh-release.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, str(ROOT / "tools" / "build_release.py"), "--no-self-check",
                 "--out", str(out)],
                capture_output=True, text=True, timeout=600, cwd=ROOT,
            )  # fmt: skip
            assert proc.returncode == 0, f"the release build failed:\n{proc.stdout}{proc.stderr}"
            done.touch()
    return out


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


#: Where a worker's own cpuacct group goes when TEST_CPU_LOG is set and cgroup v1 allows it.
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    """With ``TEST_CPU_LOG=<file>``, append one JSON line per test: its wall time and CPU seconds.
    Where the suite's time goes: ``python tools/cpu_profile.py <file>`` sums it.

    CPU is the worker's cpuacct cgroup (as root with cgroup v1): every process the test started
    counts, kernels and pip included, and nothing else on the machine. Elsewhere it is the
    worker's own rusage plus that of the processes it waited for, which misses what they did
    not wait for (a sandboxed kernel, JupyterLab) and undercounts.
    """
    log = os.environ.get("TEST_CPU_LOG")
    if not log:
        return (yield)
    clock = _cpu_clock(item.config)
    start, cpu = time.perf_counter(), clock()
    try:
        return (yield)
    finally:
        line = {
            "test": item.nodeid,
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "wall": round(time.perf_counter() - start, 2),
            "cpu": round(clock() - cpu, 2),
        }
        with open(log, "a") as out:
            out.write(json.dumps(line) + "\n")


_CLOCK = pytest.StashKey[Callable[[], float]]()


def _cpu_clock(config: pytest.Config) -> Callable[[], float]:
    """CPU seconds of this worker and everything it starts (made once per worker)."""
    if _CLOCK in config.stash:
        return config.stash[_CLOCK]
    group = CPUACCT / f"pytest-{os.getpid()}"
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(os.getpid()))
        usage = group / "cpuacct.usage"

        def clock() -> float:
            return int(usage.read_text()) / 1e9

    except OSError:

        def clock() -> float:
            total = 0.0
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
                use = resource.getrusage(who)
                total += use.ru_utime + use.ru_stime
            return total

    config.stash[_CLOCK] = clock
    return clock


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave no cpuacct group behind: back to the parent group, then remove ours."""
    if _CLOCK not in config.stash:
        return
    group = CPUACCT / f"pytest-{os.getpid()}"
    if group.is_dir():
        with contextlib.suppress(OSError):
            (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
            group.rmdir()


#: Tests that asked for an xdist group but did not get one (filled on xdist workers).
_UNGROUPED = pytest.StashKey[set[str]]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the run, and catch ``--dist loadgroup`` not grouping.

    Longest first: tests marked ``early`` come first (a stable sort: each part keeps the file
    order), so that the two workers finish together on short tests instead of one running a
    long test alone at the end. Under ``--dist loadgroup`` pytest-xdist then hands out the
    xdist groups before single tests, largest group first (its default ``--loadscope-reorder``,
    review ta11), each group's tests in this order; ``early`` orders the single tests.

    Grouping stopped once, silently (pytest 9.2 with pytest-xdist 3.8): tests marked
    ``xdist_group`` share one resource (``/autograder``, one JupyterLab), and split over two
    workers they collide or do the same work twice.
    """
    items.sort(key=lambda item: item.get_closest_marker("early") is None)
    if not os.environ.get("PYTEST_XDIST_WORKER") or not config.getvalue("loadgroup"):
        return
    config.stash[_UNGROUPED] = {
        item.nodeid
        for item in items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rsplit("]", 1)[-1]
    }


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in item.config.stash.get(_UNGROUPED, set()):
        pytest.fail(
            "--dist loadgroup did not keep this xdist_group test on one worker: this "
            "pytest-xdist does not support this pytest. Install the pinned versions (make venv)."
        )
