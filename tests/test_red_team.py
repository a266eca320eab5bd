"""The independent red team's findings against the namespace sandbox (rt20, 2026-12-06; their
reproductions: tmp_squat, cleanup_flood, disk_fill, grader_killed, hb_symlink, userns,
fork_memory, leftovers, floor_forge). Each test fails on the grader they attacked.

Cheap where it can be: path checks, clean-up and the results file are exercised directly, and
the attacks that need a kernel share two gradings (one namespaced, one floor). To see them fail
on the old grader::

    git archive 9ac0494 grading | tar -x -C /tmp/old
    GRADING_UNDER_TEST=/tmp/old/grading .venv/bin/python -m pytest tests/test_red_team.py
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.corpus import corpus
from tests.test_trust_boundary import (
    GRADING,
    _Graded,
    _notebook,
    assert_linear,
    grade,
    gs,
    host_uids,
    uids,
)

# Its own xdist group: it runs beside test_trust_boundary (the longest module), not after it.
pytestmark = [pytest.mark.grading, pytest.mark.slow, pytest.mark.xdist_group("red-team")]

#: Stand-ins for sandbox uids in the unit tests (outside FRESH_UIDS: no run ever picks them).
ATTACKER = 61_490
OTHER = 61_491


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    require_root()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A root-owned, sticky, world-writable folder directly in /tmp (a SHARED_DIR's child is not
    searched unless world-writable: this one is, like /tmp itself)."""
    path = Path(tempfile.mkdtemp(prefix="red-team-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        host_uids.remove_tree(path)
        for uid in (ATTACKER, OTHER):
            with contextlib.suppress(RuntimeError):
                host_uids.end_uid(uid)


def _autograder(tmp: Path) -> Path:
    """The release's autograder with the grader under test, in a root-owned folder."""
    src = tmp / "source"
    with zipfile.ZipFile(corpus.ZIP) as zf:
        zf.extractall(src)
    shutil.rmtree(src / "grading")
    shutil.copytree(GRADING, src / "grading", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _cli(
    src: Path, sub: Path, res: Path, *extra: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grading", str(src), str(sub), str(res), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------- 1. tmp_squat
def test_planted_results_link_and_foreign_submission_folder_are_refused(shared_tmp: Path):
    """A symlink for the results folder and a folder of the sandbox uid for the upload, planted in
    /tmp: the old grader chmod()ed the link's target 0700, wrote results.json into it, and graded
    the notebook the attacker swapped in. Now: refused, the target untouched, nothing written."""
    base = Path(tempfile.mkdtemp(prefix="red-team-src-"))
    try:
        os.chmod(base, 0o711)
        src = _autograder(base)
        target = base / "target"
        target.mkdir(mode=0o755)
        (target / "existing.txt").write_text("x")
        link = shared_tmp / "vres"
        os.symlink(target, link)
        os.lchown(link, ATTACKER, ATTACKER)
        squat = shared_tmp / "vsub"
        squat.mkdir()
        os.chmod(squat, 0o777)
        os.chown(squat, ATTACKER, ATTACKER)
        nb = _notebook("blank", [])
        (squat / f"{corpus.ASSIGNMENT}.ipynb").write_text(json.dumps(nb))
        proc = _cli(src, squat, link, "--sandbox", "floor")
        assert stat.S_IMODE(target.stat().st_mode) == 0o755, "root chmod()ed through the link"
        assert sorted(p.name for p in target.iterdir()) == ["existing.txt"], proc.stderr[-2000:]
        assert proc.returncode != 0 and "refused" in proc.stderr, proc.stderr[-2000:]

        res = base / "results"
        res.mkdir()
        proc = _cli(src, squat, res, "--sandbox", "floor")
        results = json.loads((res / "results.json").read_text())
        assert results["score"] == 0 and "refused" in results["output"], results["output"]
        assert "another user could" in results["output"], results["output"]
    finally:
        host_uids.remove_tree(base)


def test_cleanup_of_a_uid_folder_keeps_other_users_files(shared_tmp: Path):
    """The attacker's folder in /tmp held the victim's upload (a root file): the old clean-up
    rm -rf'd it whole. Now only the uid's entries go (deep trees too, links never followed) and
    the folder, still holding another user's file, is handed to root."""
    squat = shared_tmp / "vsub"
    squat.mkdir()
    os.chown(squat, ATTACKER, ATTACKER)
    os.chmod(squat, 0o777)
    victim = squat / "offline_rl.ipynb"
    victim.write_text("the victim's upload")
    outside = shared_tmp / "outside.txt"
    outside.write_text("root's")
    os.chown(shared_tmp / "outside.txt", OTHER, OTHER)
    mine = squat / "deep"
    path = mine
    for _ in range(300):  # deeper than any fd-per-level or recursion-happy walk would like
        path.mkdir()
        os.chown(path, ATTACKER, ATTACKER)
        path = path / "d"
    os.symlink(outside, squat / "link")
    os.lchown(squat / "link", ATTACKER, ATTACKER)
    for i in range(5):
        (squat / f"f{i}").write_text("x")
        os.chown(squat / f"f{i}", ATTACKER, ATTACKER)
    alone = shared_tmp / "alone"
    alone.mkdir()
    os.chown(alone, ATTACKER, ATTACKER)

    uids.clean_uid(ATTACKER)

    assert victim.read_text() == "the victim's upload"
    assert outside.read_text() == "root's"
    assert sorted(p.name for p in squat.iterdir()) == ["offline_rl.ipynb"]
    assert squat.stat().st_uid == 0 and not squat.stat().st_mode & stat.S_IWOTH
    assert not alone.exists()
    assert host_uids.leftovers(ATTACKER) == []


# --------------------------------------------------------------------- 2. cleanup_flood
def test_cleanup_removes_many_files_without_a_process_per_file(monkeypatch: pytest.MonkeyPatch):
    """20 000 files in /var/tmp cost the old grader one `rm -rf` subprocess each (85 s past the
    deadline). Counted, not timed: the clean-up starts at most a constant number of processes."""
    spawned: list[object] = []
    real = subprocess.Popen.__init__
    this_thread = threading.get_ident()  # not the module's background gradings (hostile_runs)

    def counting(self, args, *a, **kw):  # type: ignore[no-untyped-def]
        if threading.get_ident() == this_thread:
            spawned.append(args)
        real(self, args, *a, **kw)

    files = [f"/var/tmp/red-team-flood-{i}" for i in range(2_000)]
    for name in files:
        fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.fchown(fd, ATTACKER, ATTACKER)
        os.close(fd)
    try:
        monkeypatch.setattr(subprocess.Popen, "__init__", counting)
        uids.clean_uid(ATTACKER)
        monkeypatch.undo()
        assert not [f for f in files if os.path.lexists(f)]
        assert len(spawned) <= 2, f"{len(spawned)} processes for 2000 files"
    finally:
        monkeypatch.undo()
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


# --------------------------------------------------------------------- 3. disk_fill
def test_results_are_written_on_a_full_disk(tmp_path: Path):
    """The victim's grader died with ENOSPC in results.write: no results.json at all. Its space
    is now reserved when the run starts. Here a 4 MB tmpfs stands for the disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"t", str(disk).encode(), b"tmpfs", 0, b"size=4m") == 0, ctypes.get_errno()
    try:
        results_dir = disk / "results"
        reserved = gs.ResultsFile(results_dir) if hasattr(gs, "ResultsFile") else None
        with contextlib.suppress(OSError), open(disk / "fill", "wb") as f:
            while True:
                f.write(b"\0" * 2**16)
        report = {"score": 1.0, "output": "x" * 100_000, "tests": []}
        if reserved is None:
            gs.write(report, results_dir)  # the old grader: raises ENOSPC
        else:
            reserved.write(report)
            reserved.close()
        assert json.loads((results_dir / "results.json").read_text())["score"] == 1.0
    finally:
        libc.umount2(str(disk).encode(), 2)


# --------------------------------------------------------------------- 4. grader_killed
def test_reserve_ends_processes_of_an_orphaned_sandbox_uid():
    """A grader killed outright (SIGKILL) cannot clean up; its kernel's processes kept running
    for ever. The next reservation ends every sandbox uid that no run holds."""
    orphan = max(uids.FRESH_UIDS) - 7
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(orphan, orphan, orphan)
            os.setresuid(orphan, orphan, orphan)
            time.sleep(120)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while orphan not in uids._ids(Path(f"/proc/{pid}/status").read_text(), "Uid:"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with uids.reserve():
            pass
        waited, status = os.waitpid(pid, os.WNOHANG)
        assert waited == pid and os.WIFSIGNALED(status), "the orphan still runs"
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_reserve_removes_the_scratch_tree_of_a_dead_run():
    """A grader killed outright left its scratch tree (and, namespaced, its working folder's
    tmpfs) in the temporary folder; the next reservation removes it once no run holds its uid."""
    dead = max(uids.FRESH_UIDS) - 11
    top = Path(tempfile.mkdtemp(prefix="red-team-"))
    try:
        scratch = top / "grading-dead"
        (scratch / "work" / "deep").mkdir(parents=True)
        os.chown(scratch / "work", dead, dead)
        live = top / "grading-live"
        (live / "work").mkdir(parents=True)
        os.chown(live / "work", dead - 1, dead - 1)
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.bind(f"\0offline-rl-grading-uid-{dead - 1}")  # a live run holds that one
        with held:
            uids.sweep(str(top))
        assert not scratch.exists() and live.exists()
    finally:
        host_uids.remove_tree(top)


def _kernel_uid(scratch: Path, grader: subprocess.Popen, timeout: float) -> int:
    """The sandbox uid of the kernel whose connection file lies under ``scratch``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and grader.poll() is None:
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                if (
                    entry.name.isdigit()
                    and str(scratch).encode() in (entry / "cmdline").read_bytes()
                ):
                    uid = os.stat(entry).st_uid
                    if uid in uids.FRESH_UIDS:
                        return uid
        time.sleep(0.2)
    raise AssertionError(f"no kernel started: {grader.communicate()[1][-3000:]}")


def test_sigterm_ends_the_kernel_writes_a_report_and_cleans_up():
    """SIGTERM to the grader (Ctrl-C, `timeout`, a batch runner) left the floor kernel and its
    setsid child running, no results.json and the scratch tree behind."""
    tmp_path = Path(tempfile.mkdtemp(prefix="red-team-"))  # in /tmp: the uid must reach work/
    os.chmod(tmp_path, 0o711)
    src = _autograder(tmp_path)
    sub, res, scratch = tmp_path / "sub", tmp_path / "res", tmp_path / "scratch"
    for folder in (sub, res, scratch):
        folder.mkdir(mode=0o755)
    cell = (
        "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(300)\ntime.sleep(300)\n"
    )
    (sub / f"{corpus.ASSIGNMENT}.ipynb").write_text(json.dumps(_notebook("blank", [cell])))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["TMPDIR"] = str(scratch)
    cmd = [sys.executable, "-m", "grading", str(src), str(sub), str(res), "--sandbox", "floor"]
    grader = subprocess.Popen(cmd, cwd=src, env=env, stderr=subprocess.PIPE, text=True)
    uid = None
    try:
        uid = _kernel_uid(scratch, grader, 300)
        time.sleep(3)  # the cell runs
        grader.send_signal(signal.SIGTERM)
        _out, err = grader.communicate(timeout=120)
        left = host_uids.leftovers(uid)
        assert not left, f"{left} outlived the grader"
        assert not list(scratch.iterdir()), list(scratch.iterdir())
        results = json.loads((res / "results.json").read_text())
        assert "interrupted" in results["output"], err[-2000:]
    finally:
        grader.kill()
        grader.wait()
        if uid is not None:
            host_uids.end_uid(uid)
        host_uids.remove_tree(tmp_path)


# --------------------------------------------------------------------- 9. floor_forge
def test_floor_only_when_asked_or_on_gradescope(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Without namespaces a blank read a world-readable solution and scored 35: the default now
    refuses the floor off Gradescope, with a message saying how to accept it."""
    from grading import __main__ as cli

    if not hasattr(cli, "_refusal"):
        pytest.fail("the grader has no floor policy: it falls back to the floor silently")
    os.chmod(tmp_path, 0o755)
    res = tmp_path / "res"
    monkeypatch.setattr(cli, "namespaces_work", lambda: "bubblewrap (bwrap) is not installed")
    assert cli._refusal(tmp_path, res, "auto") == 2
    output = json.loads((res / "results.json").read_text())["output"]
    assert "--sandbox floor" in output and "world-readable" in output, output
    assert cli._refusal(tmp_path, tmp_path / "res2", "floor") is None
    monkeypatch.setattr(cli, "GRADESCOPE_SOURCE", tmp_path)
    assert cli._refusal(tmp_path, tmp_path / "res3", "auto") is None


def test_grader_itself_falls_back_to_the_floor_only_on_gradescope(monkeypatch, tmp_path: Path):
    """Any caller of the grader (batch grading too), not only the command line."""
    from grading import sandbox

    monkeypatch.setattr(sandbox, "namespaces_work", lambda: "bubblewrap (bwrap) is not installed")
    if not hasattr(sandbox, "GRADESCOPE_SOURCE"):
        pytest.fail("the sandbox falls back to the floor anywhere")
    monkeypatch.setattr(sandbox, "GRADESCOPE_SOURCE", tmp_path / "absent")
    auto = sandbox.SandboxConfig(uid=ATTACKER, isolation="auto")
    with pytest.raises(sandbox.KernelStartError, match="--sandbox floor"):
        sandbox.use_namespaces(auto)
    floor = sandbox.SandboxConfig(uid=ATTACKER, isolation="floor")
    assert sandbox.use_namespaces(floor) is False
    monkeypatch.setattr(sandbox, "GRADESCOPE_SOURCE", tmp_path)
    assert sandbox.use_namespaces(auto) is False


def _probe(graded: _Graded, marker: str) -> str:
    """The line a probe cell printed (kept in the kernel's output: read from the report)."""
    return _printed(graded, marker)


# ------------------------------------------- rt7: a grader whose own memory group is limited
#: Run as a separate grader process inside the memory group ``argv[1]`` (made by the test):
#: prints the cap a kernel's group gets there.
LIMITED_GRADER = r"""
import json, os, sys
from pathlib import Path
group, mode = Path(sys.argv[1]), sys.argv[2]
(group / "cgroup.procs").write_text(str(os.getpid()))
sys.path.insert(0, sys.argv[3])
from grading import sandbox
made = sandbox.memory_cgroup(f"grading-{sys.argv[4]}-test", sandbox.SandboxConfig(uid=None))
print(json.dumps({"cap": int((made / "memory.limit_in_bytes").read_text())}))
sandbox.remove_cgroup(made)
"""


@contextlib.contextmanager
def _limited_group(mb: int) -> Iterator[Path]:
    """A fresh cgroup v1 memory group of ``mb`` MB inside this process's own (how
    benchmarks/grading_resources.py emulates Gradescope's 768 MB container)."""
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "memory.limit_in_bytes").exists():
        if os.environ.get("CI"):
            pytest.fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
        pytest.skip("no cgroup v1 memory controller")
    line = next(
        ln
        for ln in Path("/proc/self/cgroup").read_text().splitlines()
        if "memory" in ln.split(":")[1].split(",")
    )
    group = root / line.split(":", 2)[2].lstrip("/") / f"rt7-{os.getpid()}-{mb}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(mb * 2**20))
        with contextlib.suppress(OSError):
            (group / "memory.memsw.limit_in_bytes").write_text(str(mb * 2**20))
        yield group
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                for child in group.glob("grading-*"):
                    child.rmdir()
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _limited_grader(group: Path, mode: str, arg: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED_GRADER, str(group), mode, str(GRADING.parent), str(arg)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kernel_cap_leaves_room_for_the_grader_in_a_limited_group():
    """cg_oom_outputs: in a 768 MB group the kernel's 700 MB cap let kernel + grader exceed the
    group. The cap now leaves the grader's reserve free."""
    from grading import sandbox

    with _limited_group(768) as group:
        done = _limited_grader(group, "cap", ATTACKER)
    assert done.returncode == 0, done.stderr[-2000:]
    cap = json.loads(done.stdout)["cap"]
    assert cap + sandbox.GRADER_RESERVE_BYTES <= 768 * 2**20, cap / 2**20
    assert cap >= 384 * 2**20, f"{cap / 2**20:.0f} MB: too little for the solution (~390 MB)"


def test_a_kernel_killed_below_its_own_cap_is_not_blamed(tmp_path: Path):
    """cg_shared_oom, cg_oom_outputs: a kernel the OOM killer of a group ABOVE its own killed
    (the grader's group filled) was reported as the student's cell crashing. Read from the
    kernel's group: an OOM kill there while its peak stayed below its own cap is the machine's.
    A fake group folder with the counters cgroup v1 shows (oom_kill: Linux >= 4.13)."""
    from grading import sandbox

    def group(kills: int, peak_mb: int) -> Path:
        g = tmp_path / f"grading-{kills}-{peak_mb}"
        g.mkdir()
        (g / "memory.limit_in_bytes").write_text(f"{512 * 2**20}\n")
        (g / "memory.max_usage_in_bytes").write_text(f"{peak_mb * 2**20}\n")
        control = f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"
        (g / "memory.oom_control").write_text(control)
        return g

    assert sandbox.killed_below_own_cap(group(1, 300))  # the parent's OOM: not the notebook's
    assert not sandbox.killed_below_own_cap(group(1, 512))  # its own cap: the notebook's
    assert not sandbox.killed_below_own_cap(group(0, 300))  # no OOM kill: a crash
    assert not sandbox.killed_below_own_cap(tmp_path / "absent")
    run = sandbox.CellRun(status="died", seconds=1.0, machine_oom=True)
    from grading import runner

    assert "crashed" not in runner._describe(run, 60.0), runner._describe(run, 60.0)


@pytest.mark.parametrize("controller", ["memory", "cpu"])
def test_reserve_removes_stale_kernel_memory_groups(controller: str):
    """cg_oom_grader: the kernel's memory group of a grader killed outright stayed for ever (and
    its cpu group, since the cpu groups came)."""
    root = Path("/sys/fs/cgroup") / controller
    if not (root / "cgroup.procs").exists():
        if os.environ.get("CI"):
            pytest.fail(f"no cgroup v1 {controller} controller at {root}")
        pytest.skip(f"no cgroup v1 {controller} controller")
    dead, live = max(uids.FRESH_UIDS) - 13, max(uids.FRESH_UIDS) - 14
    stale, kept = root / f"grading-{dead}-0123456789ab", root / f"grading-{live}-0123456789ab"
    # Held before its group exists: another grader's sweep (its reserve()) never sees it unheld.
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(f"\0offline-rl-grading-uid-{live}")  # a live run holds that one
    stale.mkdir()
    kept.mkdir()
    try:
        with held:
            uids.sweep(tempfile.mkdtemp(prefix="red-team-empty-"))
        assert not stale.exists(), "the stale group is left"
        assert kept.exists(), "a live run's group was removed"
    finally:
        for group in (stale, kept):
            with contextlib.suppress(OSError):
                group.rmdir()


# ------------------------------------------------- rt11: untrusted cells meet a quadratic loop
def test_check_cells_cost_linear_time_in_the_notebook():
    """rt11: each ``grader.check`` cell walked back over every earlier cell to find its answers,
    plain cells x checks: 60,000 of each cost the old grader ~85 CPU-s (160,000: 668 CPU-s and
    912 s, past the run's deadline, before the kernel started). 20 CPU-s is ~40 times what the
    linear pass needs."""
    code = textwrap.dedent("""
        from grading import runner
        n = 60_000
        plain = [{"cell_type": "code", "source": f"x{i} = {i}", "metadata": {}} for i in range(n)]
        tags = {"tags": ["otter_answer_cell"]}
        answer = {"cell_type": "code", "source": "y = 1", "metadata": tags}
        check = {"cell_type": "code", "source": 'grader.check("q1_coverage")', "metadata": {}}
        cells, _ = runner.code_cells({"cells": [answer, *plain, *[check] * n]})
        assert cells[0].question == "q1_coverage" and len(cells) == n + 1, cells[:2]
        print("linear")
    """)
    assert_linear(20, code)


def test_answer_extraction_costs_linear_time_in_the_notebook():
    """rt11: batch grading reads every upload's hand-graded answers before it grades anyone, and
    joined a question's answer cells one by one: 80,000 cells (13 MB) cost 29 CPU-s, 64 MB tens
    of minutes, on every run of the class. 120,000 cost the old code ~65 CPU-s; 10 is plenty."""
    code = textwrap.dedent("""
        from grading.batch import answers
        def md(text, tags):
            return {"cell_type": "markdown", "source": text, "metadata": {"tags": tags}}
        n, size = 120_000, 80
        cells = [md("### Question 13 " + "long title " * 10_000, [])]
        cells += [md("w" * size, ["otter_answer_cell"])] * n
        found = answers.from_notebook({"cells": cells})
        text, total = found["manual"]["13"], n * size + 2 * (n - 1)
        assert text.startswith("w" * size + "\\n\\n"), text[:100]
        assert f"cut here: {total:,} characters" in text[-80:], text[-80:]
        assert len(text) < answers.MAX_MANUAL_CHARS + 100, len(text)
        assert len(found["titles"]["13"]) <= answers.MAX_TITLE_CHARS, len(found["titles"]["13"])
        print("linear")
    """)
    assert_linear(10, code)


def test_a_huge_error_array_is_cut_before_it_becomes_text():
    """error_bytes_repr: a check's ``__error__`` as a 0-d bytes array of 60 MB; clean() called
    str() first and numpy built the whole repr (~630 MB: MemoryError, "The autograder itself
    failed", score 0). The text is now bounded before str()."""
    import tracemalloc

    import numpy as np

    huge = np.array(b"Traceback: " + b"x" * (20 * 2**20))
    tracemalloc.start()
    try:
        text = gs.clean(huge, 1_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert text.startswith("Traceback: xxx") and len(text) <= 1_000, text[:80]
    assert peak < 2**20, f"{peak / 2**20:.0f} MB of text built for 1,000 characters"


@pytest.mark.parametrize("lie", [False, True])
def test_npz_with_a_huge_directory_is_refused_before_zipfile_parses_it(monkeypatch, lie: bool):
    """npz_central_dir: a 33 MB .npz of 650k directory entries; zipfile.ZipFile() parsed them
    all (59 CPU-s, 376 MB per check) before the "at most 256 arrays" check. The end record is
    read first; its size bounds the work even when its count lies."""
    import io
    import struct

    from grading import runner

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(5_000):
            zf.writestr(f"a{i}.npy", b"")
    data = bytearray(buffer.getvalue())
    if lie:  # the end record claims one entry; the directory still holds 5,000
        end = data.rfind(b"PK\x05\x06")
        data[end + 8 : end + 12] = struct.pack("<HH", 1, 1)

    def parsed(*args, **kwargs):
        raise AssertionError("zipfile parsed the whole directory first")

    # runner's own reference only: zipfile itself is shared with the module's background
    # gradings (hostile_runs), which open the autograder zip (review ta11).
    monkeypatch.setattr(
        runner, "zipfile", types.SimpleNamespace(**{**vars(zipfile), "ZipFile": parsed})
    )
    with pytest.raises(ValueError, match="at most") as refused:
        runner.load_npz(bytes(data))
    assert ("5000 arrays" in str(refused.value)) != lie, refused.value


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_batch_lowers_jobs_to_what_its_memory_group_holds(tmp_path: Path, capsys, version: str):
    """cg_shared_oom: two gradings in one 900 MB group; one student's kernel filling it got the
    other's killed (the solution scored 5/35). Batch now reads its group's limit (a fake cgroup
    tree here, v1 and v2) and runs only as many gradings as fit."""
    from grading.batch import cli

    proc = tmp_path / "cgroup"
    limit = 2 * cli.PER_GRADING_BYTES + 2**20  # room for two gradings, not three
    if version == "v1":
        proc.write_text("5:memory:/batch/slice\n4:cpu:/\n0::/\n")
        slice_ = tmp_path / "memory" / "batch" / "slice"
        slice_.mkdir(parents=True)
        (slice_ / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # none itself
        (slice_.parent / "memory.limit_in_bytes").write_text(f"{limit}\n")  # its parent's
    else:
        proc.write_text("0::/batch/slice\n")
        (tmp_path / "cgroup.controllers").write_text("memory pids\n")
        slice_ = tmp_path / "batch" / "slice"
        slice_.mkdir(parents=True)
        (slice_ / "memory.max").write_text(f"{limit}\n")
        (slice_.parent / "memory.max").write_text("max\n")
    found = cli.own_memory_limit(proc, tmp_path)
    assert found == limit, found
    assert cli.fit_jobs(4, found) == 2
    assert "--jobs 4 lowered to 2" in capsys.readouterr().err
    assert cli.fit_jobs(2, found) == 2 and cli.fit_jobs(4, None) == 4
    assert cli.fit_jobs(3, cli.PER_GRADING_BYTES // 2) == 1  # never below one


# ------------------------------------------------------- 5-7. one namespaced hostile grading
HB_SYMLINK = """# HBLINK probe
import json, os, signal, time
c = json.load(open('.kernel-connection.json'))
hb = f"{c['ip']}-{c['hb_port']}"
os.rename(hb, hb + '.orig')
os.symlink(open('hb_target.txt').read(), hb)
me = os.getpid()
if os.fork() == 0:
    time.sleep(0.5); os.kill(me, signal.SIGSTOP); time.sleep(5); os.kill(me, signal.SIGCONT)
    os._exit(0)
time.sleep(8)
"""
USERNS = """# USERNS probe
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    r = libc.unshare(0x10000000 | 0x00020000)  # CLONE_NEWUSER | CLONE_NEWNS
    os._exit(0 if r == 0 else 1)
_, status = os.waitpid(pid, 0)
ok = os.waitstatus_to_exitcode(status) == 0
raise RuntimeError('USERNS unshare ' + ('succeeded' if ok else 'refused'))
"""
DISK_FILL = """# DISKFILL probe
import os
os.makedirs('.fill', exist_ok=True)
written = 0
try:
    for n in range(40):  # 40 x 32 MB: past the working folder's cap, far below the disk
        with open(f'.fill/{n}', 'wb') as f:
            for _ in range(32):
                f.write(b'\\0' * 2**20); written += 2**20
    why = 'none'
except OSError as err:
    why = err.strerror
import shutil; shutil.rmtree('.fill')
raise RuntimeError(f'DISKFILL {written // 2**20} MB stopped by {why}')
"""
FORK_MEMORY = """# FORKMEM probe
import os, subprocess, sys, time
# Each child (a fresh interpreter: a fork of the threaded kernel may deadlock in malloc) touches
# 330 MB in 10 MB steps, noting how far it got.
CHILD = '''
import sys, time
blocks = []
for mb in range(10, 340, 10):
    b = bytearray(10 * 2**20)
    for j in range(0, len(b), 4096): b[j] = 1
    blocks.append(b)
    with open(sys.argv[1], 'w') as f: f.write(str(mb))
time.sleep(30)
'''
children = [subprocess.Popen([sys.executable, '-c', CHILD, f'.fm{i}']) for i in range(3)]
def mb(i):
    return int(open(f'.fm{i}').read() or 0) if os.path.exists(f'.fm{i}') else 0
waiting, end, died = dict(enumerate(children)), time.time() + 30, 0
while waiting and time.time() < end:  # until each child is full or dead (the OOM killer)
    for i, child in list(waiting.items()):
        if child.poll() is not None:
            died += 1
            del waiting[i]
        elif mb(i) == 330:
            del waiting[i]
    time.sleep(0.5)
full = sum(mb(i) == 330 for i in range(3))
for child in children:
    child.kill(); child.wait()
raise RuntimeError(f'FORKMEM children full={full} died={died}')
"""


CPU_CAP = """# CPUCAP probe
import os, subprocess, sys, time
# Twelve fresh interpreters burn 0.4 CPU-s each; the cell measures the wall time they took
# together. Held to one core they need 4.8 s at least. Each runs in a session of its own, as a hog
# would: the scheduler shares the CPU between sessions (autogroups) and groups, so uncapped,
# twelve sessions beside N other busy ones get 24 / (12 + N) cores of 2: more than 1.1 while
# N < 9 (the suite's two workers and their kernels are about 3, a CPU hog one more; three
# burners were outweighed: review ta11; eight leave little room under a hog: review ta12).
BURN = 'import time\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass'
start, before = time.monotonic(), os.times()
burners = [subprocess.Popen([sys.executable, '-c', BURN], start_new_session=True)
           for _ in range(12)]
for child in burners:
    child.wait()
after = os.times()
cpu = after.children_user + after.children_system - before.children_user - before.children_system
raise RuntimeError(f'CPUCAP cpu={cpu:.2f} wall={time.monotonic() - start:.2f}')
"""


def _grade_namespaced() -> tuple[_Graded, int]:
    """Findings 5-7 (and 3's working folder) in one namespaced grading of the solution plus the
    attacks; a host socket listens where the heartbeat link points."""
    folder = Path(tempfile.mkdtemp(prefix="red-team-hb-"))
    path = folder / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(64)
        listener.setblocking(False)
        files = {"files/hb_target.txt": str(path).encode()}
        cells = [USERNS, DISK_FILL, HB_SYMLINK, FORK_MEMORY, CPU_CAP]
        graded = grade(cells, base="solution", files=files, isolation="require")
        accepted = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                listener.accept()[0].close()
                accepted += 1
    shutil.rmtree(folder)
    return graded, accepted


#: The tests that read each hostile grading (they come last in the module).
BACKGROUND_TESTS = {
    "namespaced": {
        "test_root_never_follows_a_heartbeat_link",
        "test_namespaced_kernel_cannot_create_user_namespaces",
        "test_working_folder_is_capped",
        "test_forked_children_share_one_memory_cap",
        "test_a_kernels_processes_together_get_one_core[namespaced]",
    },
    "floor": {
        "test_floor_kernel_cannot_create_user_namespaces",
        "test_floor_leaves_no_lock_file_queue_or_flood",
        "test_a_kernels_processes_together_get_one_core[floor_run]",
    },
}


@pytest.fixture(scope="module", autouse=True)
def hostile_runs(request: pytest.FixtureRequest, _root: None) -> Iterator[dict[str, Future]]:
    """The namespaced and the floor hostile gradings, started when the module starts and run one
    after the other in the background: their probes mostly wait (a stopped kernel, children
    filling memory, 8 s of sleep), so the module's other tests use that time. Every grading
    gets a fresh uid that its run holds, so the module's clean-up tests never touch them."""
    module = request.node.nodeid
    selected = {item.name for item in request.session.items if item.nodeid.startswith(module)}
    wanted = {run: grade for run, grade in (("namespaced", _grade_namespaced),
                                            ("floor", _grade_floor))
              if selected & BACKGROUND_TESTS[run]}  # fmt: skip
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield {run: pool.submit(grade) for run, grade in wanted.items()}
    finally:  # a run whose tests were not reached (-x, Ctrl-C) is not started
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def namespaced(hostile_runs: dict[str, Future]) -> tuple[_Graded, int]:
    return hostile_runs["namespaced"].result()


def _printed(graded: _Graded, marker: str) -> str:
    """What a cell printed after ``marker`` (from the kernel's stdout kept in stderr/report)."""
    return " | ".join(re.findall(rf"{marker}[^\n\"]*", graded.text + graded.stderr))


def test_root_never_follows_a_heartbeat_link(namespaced):
    graded, accepted = namespaced
    assert accepted == 0, f"the root grader connected {accepted} times to a host socket"
    assert graded.scores() == graded.full(), graded.results["output"]
    assert not graded.owed, graded.owed


def test_namespaced_kernel_cannot_create_user_namespaces(namespaced):
    graded, _ = namespaced
    assert "USERNS unshare refused" in _probe(graded, "USERNS"), _probe(graded, "USERNS")


def test_working_folder_is_capped(namespaced):
    graded, _ = namespaced
    line = _probe(graded, "DISKFILL")
    found = re.search(r"DISKFILL (\d+) MB stopped by (.*)", line)
    assert found, line
    assert int(found.group(1)) <= 300 and "space" in found.group(2), line


def test_forked_children_share_one_memory_cap(namespaced):
    graded, _ = namespaced
    line = _probe(graded, "FORKMEM")
    # Uncapped, the three children hold their 330 MB each at once beside the kernel (RLIMIT_DATA
    # is per process): full=3 died=0. In one 700 MB cgroup with the kernel, its OOM killer ends
    # a child (died >= 1), or the kernel itself (the cell crashed: a cap too).
    found = re.search(r"FORKMEM children full=(\d) died=(\d)", line)
    if found is None:
        assert "FORKMEM probe`) crashed" in line, graded.question("Notebook report")
    else:
        assert int(found.group(2)) >= 1 and int(found.group(1)) < 3, line


@pytest.mark.parametrize("run", ["namespaced", "floor_run"])
def test_a_kernels_processes_together_get_one_core(run: str, request: pytest.FixtureRequest):
    """Batch grading runs several gradings at once, and their waits are wall-clock: a kernel
    that starts busy processes must not take the CPU another student's grading needs (see
    grading/README.md, "CPU"). Its cpu group's quota holds all of them to one core together.
    Load on the machine only makes the wall time longer: it cannot make this fail."""
    graded = request.getfixturevalue(run)
    graded = graded[0] if run == "namespaced" else graded
    line = _probe(graded, "CPUCAP")
    found = re.search(r"CPUCAP cpu=([\d.]+) wall=([\d.]+)", line)
    assert found, graded.question("Notebook report")
    cpu, wall = map(float, found.groups())
    assert cpu >= 4.7, f"the probe's children did not burn their CPU: {line}"
    assert wall >= 0.9 * cpu, f"the kernel's processes used {cpu / wall:.2f} cores at once: {line}"


# ------------------------------------------------------------ 6, 8. one floor hostile grading
LEFTOVERS = """# MQUEUE probe
import ctypes, os
with open(f'/run/lock/red-team-{os.getuid()}', 'w') as f: f.write('x')
rt = ctypes.CDLL('librt.so.1', use_errno=True)
raise RuntimeError(f"MQUEUE {rt.mq_open(b'/red-team-mq', os.O_CREAT | os.O_RDWR, 0o600, None)}")
"""
FLOOD = """# FLOOD probe
import os
for i in range(3000):
    os.close(os.open(f'/var/tmp/red-team-{os.getuid()}-{i}', os.O_CREAT | os.O_WRONLY, 0o600))
"""


def _grade_floor() -> _Graded:
    return grade([USERNS, LEFTOVERS, FLOOD, CPU_CAP], base="solution", isolation="floor")


@pytest.fixture
def floor_run(hostile_runs: dict[str, Future]) -> _Graded:
    return hostile_runs["floor"].result()


def test_floor_kernel_cannot_create_user_namespaces(floor_run):
    assert "USERNS unshare refused" in _probe(floor_run, "USERNS"), _probe(floor_run, "USERNS")


def test_floor_leaves_no_lock_file_queue_or_flood(floor_run):
    """/run/lock files, POSIX message queues (the floor shares the host's IPC namespace) and
    3000 files: grade() owes nothing of the uid left (host_uids.leftovers looks for all)."""
    assert "MQUEUE" in _probe(floor_run, "MQUEUE") and "MQUEUE -1" not in _probe(floor_run, "MQ")
    assert floor_run.scores() == floor_run.full(), floor_run.results["output"]
    assert not floor_run.owed, floor_run.owed
