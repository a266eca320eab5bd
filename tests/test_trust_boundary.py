"""The grader's trust boundary (issues 8 and 20): each attack of ``attacks.py`` against the real
grader, with the kernel in namespaces (``--sandbox require``) and, where a finding must hold
without them, in the floor (``--sandbox floor``: uid separation only, as on a Gradescope image
that refuses namespaces).

Each test grades a notebook with one attack appended, through ``python -m grading`` run as root
(as Gradescope runs it), from the release's ``autograder.zip`` with ``grading/`` replaced by the
package under test. Every run must also leave a valid, root-owned results.json, finish well
inside Gradescope's 10 minutes, leave nothing in its temporary folder and no live process of its
sandbox uid: no process, SysV IPC object or file in /dev/shm or /tmp (``_Graded`` checks all
of it for every run). Most hostile runs grade the solution beside them at the same time
(``companion=True``), which must keep full marks.

To see the attacks succeed against the grader before the fix, point the tests at its copy::

    git archive 072e724 grading | tar -x -C /tmp/old
    GRADING_UNDER_TEST=/tmp/old/grading .venv/bin/python -m pytest tests/test_trust_boundary.py

The unit tests then import that copy too; the helpers that check what a run left behind always
use this checkout's ``grading/uids.py``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import nbformat
import numpy as np
import pytest

from tests.conftest import require_root
from tests.corpus import attacks, corpus
from tools import build_release

GRADING = Path(os.environ.get("GRADING_UNDER_TEST", corpus.ROOT / "grading"))
if GRADING.resolve() != (corpus.ROOT / "grading").resolve():  # the unit tests test that copy
    for _name in [m for m in sys.modules if m == "grading" or m.startswith("grading.")]:
        del sys.modules[_name]
    sys.path.insert(0, str(GRADING.parent))
from grading import results as gs  # noqa: E402
from grading import runner, sandbox, submission, uids  # noqa: E402


def _checkout_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_checkout_{name}", corpus.ROOT / "grading" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: What a run left behind is judged by this checkout's uids.py, whatever grader is under test.
host_uids = _checkout_module("uids")

# One worker runs the module (its gradings overlap the replay-budget run, which mostly sleeps),
# handed out early: it is the longest unit of the suite.
pytestmark = [
    pytest.mark.grading,
    pytest.mark.slow,
    pytest.mark.early,
    pytest.mark.xdist_group("trust-boundary"),
]

GRADESCOPE_LIMIT = 600.0
#: Gradescope's container memory; the grader and the kernel together must stay below it.
CONTAINER_BYTES = 768 * 2**20
#: Wraps the grader to report the peak memory of it and its kernels (ru_maxrss, KiB).
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="module", autouse=True)
def _root():
    require_root()


@dataclass
class _Graded:
    results: dict
    seconds: float
    peak_bytes: int
    stderr: str
    owed: list[str]
    """What the run failed to do that every run owes (see ``grade``); tests assert it is empty
    last, so that a failure names the attack's own effect first."""

    @property
    def text(self) -> str:
        return json.dumps(self.results, ensure_ascii=False)

    def scores(self) -> dict[str, float]:
        return corpus.question_scores(self.results)

    def full(self) -> dict[str, float]:
        return corpus.full_marks(self.results)

    def question(self, name: str) -> str:
        return next(t["output"] for t in self.results["tests"] if t["name"] == name)


def _notebook(base: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = corpus.student() if base == "blank" else corpus.solution()
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    return nb


def _scale(src: Path, defaults: dict[str, float]) -> None:
    """Shrink the grader's time limits (its dataclass defaults) so a timing test stays short."""
    for name, value in defaults.items():
        for module in ("runner.py", "sandbox.py"):
            path = src / "grading" / module
            text, hits = re.subn(
                rf"(\n    {name}: float = )[\d.]+", rf"\g<1>{value}", path.read_text()
            )
            path.write_text(text)
            if hits:
                break
        else:
            if name != "deadline":  # the grader before the fix had no hard deadline
                raise AssertionError(f"no default {name!r} in {GRADING} to scale")


#: The grader under test speaks ``--sandbox``; the one before issue 20 only ``--jail``.
_NEW_FLAGS = "--sandbox" in (GRADING / "__main__.py").read_text()


def _isolation_args(isolation: str) -> list[str]:
    if _NEW_FLAGS:
        return ["--sandbox", isolation]
    return ["--jail", {"require": "require", "floor": "off", "auto": "auto"}[isolation]]


def _end(uid: int) -> list[str]:
    """What of ``uid`` outlived its run; then end it all (never leave it to the next test)."""
    left = host_uids.leftovers(uid)
    try:
        host_uids.end_uid(uid)
    except RuntimeError as err:
        left.append(str(err))
    return left


def grade(
    cells: list[str],
    base: str = "blank",
    *,
    uid: int | None = None,
    scale: dict[str, float] | None = None,
    files: dict[str, bytes] | None = None,
    isolation: str = "require",
    companion: bool = False,
) -> _Graded:
    """Grade ``base`` + ``cells`` and check what every run owes: a valid root-owned results.json
    in time, an empty temporary folder, nothing left of the sandbox uid (process, SysV IPC
    object, file in /dev/shm or /tmp).

    ``isolation``: "require" (namespaces, refused without them) or "floor" (uid only).
    ``companion``: grade the solution at the same time, beside it (its own uid, same isolation):
    a hostile run must not cost another student anything, so it owes the companion full marks.
    """
    if not companion:
        return _grade_one(cells, base, uid, scale, files, isolation)
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(_grade_one, [], "solution", None, scale, None, isolation)
        graded = _grade_one(cells, base, uid, scale, files, isolation)
        beside = other.result()
    used = re.search(r"sandbox uid (\d+)", beside.stderr)
    graded.stderr += f"\nbeside: sandbox uid {used.group(1) if used else None}\n"
    full = beside.full()
    if beside.scores() != full or beside.owed:
        graded.owed.append(
            f"the solution graded beside it scored {beside.results['score']} of "
            f"{sum(full.values())} ({beside.owed}): {beside.results['output'][:300]}"
        )
    return graded


def _grade_one(
    cells: list[str],
    base: str,
    uid: int | None,
    scale: dict[str, float] | None,
    files: dict[str, bytes] | None,
    isolation: str,
) -> _Graded:
    tmp = tempfile.mkdtemp(prefix="trust-")
    try:
        os.chmod(tmp, 0o711)  # as /tmp is: the sandbox user may traverse to its working directory
        src, sub, res = Path(tmp, "source"), Path(tmp, "submission"), Path(tmp, "results")
        scratch = Path(tmp, "tmp")
        scratch.mkdir(mode=0o755)
        with zipfile.ZipFile(corpus.ZIP) as zf:
            zf.extractall(src)
        shutil.rmtree(src / "grading")
        shutil.copytree(GRADING, src / "grading", ignore=shutil.ignore_patterns("__pycache__"))
        _scale(src, scale or {})
        for name, data in (files or {}).items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        sub.mkdir()
        res.mkdir()  # Gradescope's harness creates it before run_autograder runs
        nbformat.write(_notebook(base, cells), sub / f"{corpus.ASSIGNMENT}.ipynb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["TMPDIR"] = str(scratch)
        cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "grading"]
        cmd += [str(src), str(sub), str(res), *_isolation_args(isolation)]
        cmd += ["--uid", str(uid)] if uid is not None else []
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.monotonic() - start
        path = res / "results.json"
        assert path.is_file() and not path.is_symlink(), f"no results.json:\n{proc.stderr[-3000:]}"
        owner = path.stat().st_uid
        results = json.loads(path.read_text(encoding="utf-8"))
        left = sorted(p.name for p in scratch.iterdir())
    finally:  # whatever a grader under test left there (a 1500-deep tree breaks shutil.rmtree)
        host_uids.remove_tree(tmp)
    owed = []
    if owner != 0:
        owed.append(f"results.json belongs to uid {owner}, not root")
    owed += gs.validate(results)
    if seconds >= GRADESCOPE_LIMIT:
        owed.append(f"grading took {seconds:.0f} s")
    if left:
        owed.append(f"the grading run left {left} in its temporary folder")
    used = re.search(r"sandbox uid (\d+)", proc.stderr)
    for sandbox_uid in {uid, int(used.group(1)) if used else None} - {None}:
        alive = _end(sandbox_uid)
        if alive:
            owed.append(f"{alive[:10]} of sandbox uid {sandbox_uid} outlived the run")
    peak = int(proc.stderr.strip().splitlines()[-1]) * 1024
    return _Graded(results, seconds, peak, proc.stderr, owed)


def _only_lost(graded: _Graded, lost: set[str]) -> None:
    full = graded.full()
    expected = {q: (0.0 if q in lost else points) for q, points in full.items()}
    assert graded.scores() == expected, graded.scores()


# ------------------------------------------------------------------------------- finding 1
def test_connection_file_link_cannot_forge_results():
    graded = grade(attacks.FORGE_RESULTS, companion=True)
    assert "FORGED" not in graded.text
    assert graded.results["score"] == 0, graded.scores()
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 2
def test_root_never_runs_student_code():
    site = next(p for p in sys.path if p.endswith("site-packages"))
    pth = Path(site, attacks.PTH_NAME)
    try:
        graded = grade(attacks.ROOT_VIA_PTH, companion=True)
        planted = pth.exists()
    finally:
        pth.unlink(missing_ok=True)  # a planted .pth would run in every later Python
    assert "LEAKED" not in graded.text, graded.question("Notebook report")[:1500]
    assert not planted, f"student code created {pth}"
    assert graded.results["score"] == 0, graded.scores()
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 3
def test_lone_surrogate_and_control_characters_are_reported_cleanly():
    graded = grade(attacks.SURROGATE_MESSAGE, companion=True)
    report = graded.question("Notebook report")
    assert "raised ValueError" in report, report
    assert "\x1b" not in graded.text and "\x00" not in graded.text
    assert len(graded.text) < 100_000, "the student's 200 000 characters reached the report"
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 4
def test_zombie_leader_with_a_live_thread_is_killed():
    # grade() fails if any live process of the uid (zombie leaders with threads included) is left
    graded = grade(attacks.ZOMBIE_LEADER, uid=61_471, companion=True)
    assert graded.results["score"] == 0
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 5
def test_crashing_cell_is_not_replayed_and_costs_nothing_else():
    graded = grade(attacks.CRASH_CELL_THEN_CRASHING_CHECK, base="solution", companion=True)
    _only_lost(graded, {"q2_td_target"})
    assert "crashed the Python kernel" in graded.question("q2_td_target")
    report = graded.question("Notebook report")
    assert "starting `import os; os._exit(1)`) crashed the Python kernel" in report, report
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 7
def test_hostile_npz_files_cost_only_their_checks_and_bounded_memory():
    graded = grade(attacks.NPZ_ATTACKS, base="solution", companion=True)
    _only_lost(graded, {"q1_coverage", "q6_bcq", "q7_alpha"})
    for question in ("q1_coverage", "q6_bcq", "q7_alpha"):
        assert "could not be read" in graded.question(question), graded.question(question)
    assert graded.peak_bytes < CONTAINER_BYTES, f"peak {graded.peak_bytes / 2**20:.0f} MB"
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 8
@pytest.fixture(scope="module")
def probed() -> Iterator[list[_Graded]]:
    """A probe run, with the solution graded beside it: what a kernel sees of the machine and of
    the other run. While it runs the test listens on a loopback TCP port the kernel is told
    about (a kernel with network reaches it) and holds a SysV segment and a /dev/shm file (what
    another run could leave: the kernel must see neither). Its last cell sends one 60 MB
    message."""
    libc = ctypes.CDLL(None, use_errno=True)
    with socket.socket() as listener, tempfile.NamedTemporaryFile(dir="/dev/shm") as shm_file:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = str(listener.getsockname()[1]).encode()
        segment = libc.shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
        assert segment >= 0 and shm_file.name
        try:
            files = {f"files/{attacks.PROBE_PORT_FILE}": port}
            graded = grade(
                attacks.PROBES + attacks.HOST_PROBES + attacks.ONE_HUGE_MESSAGE,
                files=files,
                companion=True,
            )
        finally:
            libc.shmctl(segment, 0, None)  # IPC_RMID
    yield [graded]


def test_kernel_sees_no_checkout_and_no_reference(probed):
    for graded in probed:
        assert "LEAKED-CHECKOUT" not in graded.text, graded.question("Notebook report")
        assert "LEAKED-REFERENCE" not in graded.text, graded.question("Notebook report")
        assert "LEAKED-FOLDERS" not in graded.text, graded.question("Notebook report")
        assert graded.results["score"] == 0
        assert not graded.owed, graded.owed


def test_each_run_has_its_own_fresh_uid_and_private_scratch(probed):
    graded = probed[0]
    found = re.search(r"PROBE uid=(\d+) workdir=(\w+) scratch_listable=(\w+)", graded.text)
    assert found, graded.question("Notebook report")
    beside = re.search(r"beside: sandbox uid (\d+)", graded.stderr)
    assert beside, "the solution graded beside it named no sandbox uid"
    run_uids = {int(found.group(1)), int(beside.group(1))}
    assert len(run_uids) == 2, f"two parallel runs shared uid {run_uids}"
    assert run_uids <= set(uids.FRESH_UIDS), run_uids
    assert (found.group(2), found.group(3)) == ("0o700", "False")
    assert not graded.owed, graded.owed


def test_one_huge_message_cuts_the_kernel_off_with_its_reason(probed):
    """The 16 MB cap holds (a context option, so set before any socket connects), and the
    dropped connection is seen at once, not waited out as a 60 s 'endless loop'."""
    report = probed[0].question("Notebook report")
    assert "sent one output of over 16 MB at once" in report, report[-3000:]
    assert "y" * 1000 not in probed[0].text


def test_kernel_open_files_are_capped_not_inherited(probed):
    """Red team rt9 (file-table): the machine's file table is shared by every grading, and a
    kernel that inherits the grader's open-file limit (10^6 on some hosts) can fill it."""
    found = re.search(r"PROBE uid=\d+ .* open_files=(\d+)", probed[0].text)
    assert found, probed[0].question("Notebook report")
    assert int(found.group(1)) <= 4096, found.group(0)


# ------------------------------------------------------------------------- issue 9 housekeeping
def test_kernel_that_fails_to_start_leaves_nothing_behind():
    # A package named like ipykernel, shipped in files/, shadows it in the kernel.
    graded = grade(
        [], files={"files/ipykernel/__init__.py": b"raise SystemExit(3)\n"}, companion=True
    )
    assert graded.results["score"] == 0
    assert "failed" in graded.results["output"], graded.results["output"]
    assert not graded.owed, graded.owed


def test_kernel_that_dies_at_start_is_started_again(tmp_path, monkeypatch):
    # A kernel can die before it answers for reasons that pass (ports taken between
    # jupyter_client picking them and the kernel binding them): one failed start must not cost
    # the student the grading. Here the first kernel exits at once; the second must serve.
    made: list = []

    class FirstOneDies(sandbox.KernelManager):
        def start_kernel(self, **kwargs):
            made.append(self)
            if len(made) == 1:
                self.kernel_spec.argv = [sys.executable, "-c", "raise SystemExit(3)"]
            return super().start_kernel(**kwargs)

    monkeypatch.setattr(sandbox, "KernelManager", FirstOneDies)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with sandbox.Sandbox(workdir, sandbox.SandboxConfig(uid=None, isolation="floor")) as box:
        run = box.run("print(6 * 7)")
        # Red team rt10: the kernel flooded the never-read stdin socket into the grader's memory.
        opened = {name: getattr(box.kc, f"_{name}_channel") for name in ("stdin", "hb")}
        assert opened == {"stdin": None, "hb": None}, opened
    assert len(made) == 2, f"{len(made)} kernel starts"
    assert run.status == "ok", run


def test_forced_uid_is_held_for_the_whole_run():
    with uids.reserve(61_472) as held:
        assert held == 61_472
        busy = pytest.raises(RuntimeError, match="held by another grading run")
        with busy, uids.reserve(61_472, wait=0.5):
            pass
    with uids.reserve(61_472):  # released on exit
        pass


# ----------------------------------------------------------------- issue 20: the second review
def _host_view(graded: _Graded) -> re.Match[str]:
    found = re.search(r"HOSTVIEW (.*) PIDS (\d+) MAXPID (\d+) INIT (\S*) END", graded.text)
    assert found, graded.question("Notebook report")[:3000]
    return found


def test_namespaced_kernel_sees_only_python_and_its_folder(probed):
    """Inside the kernel: the filesystem root lists only system folders and the parents of the
    Python installation and the workdir; no other folder of the host can be listed."""
    tops = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "proc", "dev", "tmp", "etc"}
    prefixes = (sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix))
    tops |= {Path(d).parts[1] for d in prefixes}  # the Python installation's top folders
    for graded in probed:
        seen = eval(_host_view(graded).group(1))  # a dict of lists of names: our own probe's text
        assert set(seen) == {"/"}, f"the kernel could list {sorted(seen)}"
        assert set(seen["/"]) <= tops, f"/ holds {sorted(set(seen['/']) - tops)} of the host"
        assert not graded.owed, graded.owed


def test_namespaced_kernel_sees_no_host_proc(probed):
    for graded in probed:
        found = _host_view(graded)
        pids, max_pid, init = int(found.group(2)), int(found.group(3)), found.group(4)
        assert init.endswith("bwrap"), f"pid 1 is {init!r}: the host's /proc"
        assert pids < 20 and max_pid < 100, f"{pids} processes up to pid {max_pid}: the host's"


def test_namespaced_kernel_has_no_network(probed):
    for graded in probed:
        report = graded.question("Notebook report")
        assert "NETWORK-REACHED" not in report, report
        assert "no network" in report, report


def test_namespaced_kernel_sees_no_other_runs_ipc(probed):
    """The kernel makes a SysV segment and a /dev/shm file while the test holds its own: it
    sees only its own."""
    for graded in probed:
        found = re.search(r"IPCVIEW foreign_shm=(\d+) foreign_dev_shm=(\d+) END", graded.text)
        assert found, graded.question("Notebook report")[:3000]
        assert found.groups() == ("0", "0"), found.group(0)


def test_kill_helper_root_cannot_leak_the_host():
    """Finding 1: a blank notebook stole the solution through /proc/<kill helper>/root. Now no
    process of the sandbox uid runs outside the namespace: there is nothing to stop or open."""
    graded = grade(attacks.HELPER_ROOT, companion=True)
    assert "LEAKED-HOST" not in graded.text, graded.question("Notebook report")[:2000]
    assert graded.results["score"] == 0, graded.scores()
    assert not graded.owed, graded.owed


def test_uids_has_no_helper_that_runs_as_the_sandbox_uid():
    """By construction: ending a uid never starts a process (as that uid or any other)."""
    source = Path(uids.__file__).read_text()
    assert "user=" not in source and "setuid" not in source and "_KILLER" not in source


@pytest.mark.parametrize("isolation", ["require", "floor"])
def test_guardian_cannot_outlive_the_run_or_spoil_the_uid(isolation):
    """Finding 2: a process that SIGKILLs everything of its uid in a loop made the old grader
    fail, outlived it, and failed the next grading on that uid. Then a correct solution on the
    same uid must score full marks."""
    uid = 61_474 if isolation == "require" else 61_475
    graded = grade(attacks.GUARDIAN, uid=uid, isolation=isolation, companion=True)
    assert "autograder itself failed" not in graded.results["output"], graded.stderr[-3000:]
    assert graded.results["score"] == 0, graded.scores()
    assert not graded.owed, graded.owed
    after = grade([], base="solution", uid=uid, isolation=isolation)
    assert after.scores() == after.full(), after.results["output"]
    assert not after.owed, after.owed


@pytest.fixture(scope="module", params=["require", "floor"])
def left_behind(request: pytest.FixtureRequest) -> _Graded:
    """The solution plus what a kernel may leave behind (findings 3 and 5), in either sandbox:
    one grading per sandbox serves both findings' tests."""
    return grade(
        attacks.DEEP_TREE + attacks.SHARED_MEMORY, base="solution", isolation=request.param
    )


def test_deep_closed_tree_is_removed(left_behind):
    """Finding 3: a 1500-deep tree, its top closed, crashed the old cleanup (RecursionError):
    the solution got 0 and the tree stayed. grade() checks the temporary folder is empty."""
    assert "autograder itself failed" not in left_behind.results["output"]
    assert left_behind.scores() == left_behind.full(), left_behind.results["output"]
    assert not [o for o in left_behind.owed if "temporary folder" in o], left_behind.owed


def test_shared_memory_does_not_outlive_the_run(left_behind):
    """Finding 5: a SysV segment (mode 666), a /dev/shm file and a /tmp file of the sandbox uid
    outlived the old grader's run. grade() owes none of the uid's IPC objects or files left."""
    # grade() looked for the uid's SysV objects and files in /dev/shm and /tmp after the run (a
    # segment of another key or uid here may be another test's, so only the run's uid counts).
    assert not left_behind.owed, left_behind.owed


def assert_linear(cpu_seconds: int, code: str) -> None:
    """Run ``code`` (which prints "linear" when it is done) in a fresh interpreter importing the
    grader under test, held to ``cpu_seconds`` of CPU by RLIMIT_CPU: a limit on CPU seconds, not a
    timing, so the machine's load cannot make it fail, while quadratic work is killed at it."""
    n = cpu_seconds
    limit = f"import resource\nresource.setrlimit(resource.RLIMIT_CPU, ({n}, {n}))\n"
    env = {**os.environ, "PYTHONPATH": str(GRADING.parent)}
    proc = subprocess.run(  # in GRADING's folder: ``-c`` puts the working folder first on the path
        [sys.executable, "-c", limit + code],
        capture_output=True,
        text=True,
        env=env,
        cwd=GRADING.parent,
        timeout=600,
    )
    assert proc.stdout.strip() == "linear", (
        f"not done within {cpu_seconds} CPU-s (exit {proc.returncode}, -9: killed at the limit) "
        f"{proc.stderr[-2000:]}"
    )


def test_scaffolding_match_is_linear_in_the_cell():
    """Finding 4: the old scaffolding regex backtracked quadratically (4 CPU-s for 32 k spaces;
    a 400 kB cell held the grader past 10 minutes). 1 MB of spaces costs the old code hours;
    a CPU-time limit of 60 s fails it."""
    code = (
        "import nbformat\n"
        "from grading import runner\n"
        "nb = nbformat.v4.new_notebook()\n"
        "for text in (' ' * 2**20, '#\\n' * 2**19 + ' ' * 2**19, ' \\n' * 2**19):\n"
        "    nb.cells = [nbformat.v4.new_code_cell(text + 'x = 1')]\n"
        "    cells, _ = runner.code_cells(nb)\n"
        "    assert len(cells) == 1, cells\n"
        "print('linear')\n"
    )
    assert_linear(60, code)


def test_scaffolding_cells_are_still_recognised():
    nb = nbformat.v4.new_notebook()
    scaffolding = [
        'grader.check("q1_coverage")',
        "  grader.check_all()  ",
        '# Initialize Otter\nimport otter\ngrader = otter.Notebook("offline_rl.ipynb")',
        "# Save your notebook first, then run this cell to export your submission.\n"
        "grader.export(pdf=False, run_tests=True)",
    ]
    kept = [
        'grader.check("q1")\nx = 1',
        "import otter\nx = 1",
        "# just a comment\nx = 2",
        "# IGNORE THE GRADIENT here\ndef td_target(): ...",
    ]  # red team rt9: was skipped
    nb.cells = [nbformat.v4.new_code_cell(src) for src in scaffolding + kept]
    cells, _ = runner.code_cells(nb)
    assert [c.source for c in cells] == kept


def test_cells_of_any_json_shape_cost_no_crash():
    """Red team rt9 (batch-crash-deep-json): a valid JSON notebook whose cell metadata is a
    list crashed a reader; the grader reads what is there and ignores the rest."""
    nb = {"cells": [
        {"cell_type": "code", "source": "a = 1", "metadata": ["not", "a", "dict"]},
        {"cell_type": "code", "source": ["b = ", 2, "2"], "metadata": {"tags": 7}},
        {"cell_type": "code", "source": 3, "metadata": {"otter": ["ignore"]}},
        ["a", "list"],
        {"cell_type": "code", "source": "c = 3", "metadata": {"tags": ["otter_ignore", 5]}},
    ]}  # fmt: skip
    cells, skipped = runner.code_cells(nb)
    assert ([c.source for c in cells], skipped) == (["a = 1", "b = 2"], 1)


def test_only_what_otter_ignores_is_skipped():
    """otter's runner skips a cell tagged otter_ignore or with metadata otter.ignore; so does the
    grader, and counts them (the report says how many demo cells were not run)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x{i} = {i}") for i in range(3)]
    nb.cells[0].metadata["tags"] = ["otter_ignore"]
    nb.cells[1].metadata["otter"] = {"ignore": True}
    cells, skipped = runner.code_cells(nb)
    assert ([c.source for c in cells], skipped) == (["x2 = 2"], 2)


def _write_nb(path: Path, name: str = corpus.ASSIGNMENT, code: str = "x = 1") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["otter"] = {"assignment_name": name}
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


def test_decoy_notebook_costs_only_itself(tmp_path):
    """Finding 6: a second .ipynb nested 100 000 brackets deep raised RecursionError in the old
    find_notebook, and the valid notebook beside it got 0 ('the autograder itself failed')."""
    sub = tmp_path / "sub"
    sub.mkdir()
    _write_nb(sub / f"{corpus.ASSIGNMENT}.ipynb")
    (sub / "decoy.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    found = submission.find_notebook(
        sub, f"{corpus.ASSIGNMENT}.ipynb", corpus.ASSIGNMENT, tmp_path / "unpacked"
    )
    assert found.path.name == f"{corpus.ASSIGNMENT}.ipynb"
    assert any("decoy.ipynb" in note for note in found.notes), found.notes


def test_notebook_beside_its_own_export_zip_is_graded(tmp_path):
    """Red team rt9: the notebook and the zip its export cell wrote (same bytes inside) were two
    candidates, and the solution scored 0 ('none is clearly the one to grade')."""
    sub = tmp_path / "sub"
    sub.mkdir()
    notebook = sub / f"{corpus.ASSIGNMENT}.ipynb"
    _write_nb(notebook)
    # Red team rt10: the copy in the zip was saved before the export cell ran (its outputs and
    # execution counts differ; its code does not).
    exported = nbformat.read(notebook, as_version=4)
    exported.cells[0].execution_count = 7
    exported.cells[0].outputs = [nbformat.v4.new_output("stream", text="exported\n")]
    with zipfile.ZipFile(sub / f"{corpus.ASSIGNMENT}_2026_12_06.zip", "w") as zf:
        zf.writestr(notebook.name, nbformat.writes(exported))
    found = submission.find_notebook(sub, notebook.name, corpus.ASSIGNMENT, tmp_path / "unpacked")
    assert found.path.name == notebook.name
    assert any("same code" in note for note in found.notes), found.notes


def test_upper_case_suffixes_are_found(tmp_path):
    """Red team rt10: OFFLINE_RL.IPYNB (or a .ZIP) was "No notebook found", score 0."""
    sub = tmp_path / "sub"
    sub.mkdir()
    _write_nb(sub / "OFFLINE_RL.IPYNB")
    with zipfile.ZipFile(sub / "EXPORT.ZIP", "w") as zf:
        zf.write(sub / "OFFLINE_RL.IPYNB", "INNER.IPYNB")
    found = submission.find_notebook(
        sub, f"{corpus.ASSIGNMENT}.ipynb", corpus.ASSIGNMENT, tmp_path / "unpacked"
    )
    assert found.path.name.lower().endswith(".ipynb")
    assert any("same code" in note for note in found.notes), found.notes


def test_assignment_metadata_of_any_shape_costs_no_crash(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    for i, otter in enumerate([["assignment_name"], {"assignment_name": 5}, "x"]):
        (sub / f"odd{i}.ipynb").write_text(json.dumps(
            {"nbformat": 4, "nbformat_minor": 5, "cells": [], "metadata": {"otter": otter}}
        ))  # fmt: skip
    _write_nb(sub / f"{corpus.ASSIGNMENT}.ipynb")
    found = submission.find_notebook(
        sub, f"{corpus.ASSIGNMENT}.ipynb", corpus.ASSIGNMENT, tmp_path / "unpacked"
    )
    assert found.path.name == f"{corpus.ASSIGNMENT}.ipynb"


def test_candidate_notebooks_are_capped_in_number_and_time(tmp_path):
    """Finding 6: 40 large decoys cost a solution its whole budget: at most MAX_CANDIDATES are
    parsed, and none once the reading deadline has passed."""
    sub = tmp_path / "sub"
    sub.mkdir()
    for i in range(submission.MAX_CANDIDATES + 20):
        _write_nb(sub / f"decoy{i:02d}.ipynb", name="another", code=f"decoy = {i}")
    _write_nb(sub / f"{corpus.ASSIGNMENT}.ipynb")  # sorts after every decoy
    found = submission.find_notebook(
        sub, f"{corpus.ASSIGNMENT}.ipynb", corpus.ASSIGNMENT, tmp_path / "unpacked"
    )
    assert found.path.name == f"{corpus.ASSIGNMENT}.ipynb", "decoys crowded the notebook out"
    note = next(n for n in found.notes if n.startswith("Found"))
    assert note.startswith(f"Found {submission.MAX_CANDIDATES} notebooks"), found.notes
    late = pytest.raises(submission.SubmissionError, match="took too long")
    with late:
        submission.find_notebook(
            sub, f"{corpus.ASSIGNMENT}.ipynb", corpus.ASSIGNMENT, tmp_path / "u2", deadline=0.0
        )


def test_run_deadline_counts_from_the_grader_start(tmp_path):
    """Reading the upload counts against the run's time: a grader that started long ago (here:
    more than the whole budget) reads no candidate notebook and says why, instead of parsing
    and running it on a fresh clock (finding 6: 40 decoys cost a solution its whole budget)."""
    with zipfile.ZipFile(corpus.ZIP) as zf:
        zf.extractall(tmp_path / "source")
    sub = tmp_path / "submission"
    sub.mkdir()
    _write_nb(sub / f"{corpus.ASSIGNMENT}.ipynb")
    config = runner.GradingConfig(sandbox=sandbox.SandboxConfig(uid=None))
    grader = runner.Grader(tmp_path / "source", config)
    started = time.monotonic() - config.budget - 1
    result = grader.grade(sub, tmp_path / "results", start=started)
    assert result["score"] == 0
    assert "took too long" in result["output"], result["output"]


def test_kernel_start_failing_with_any_error_is_retried(tmp_path, monkeypatch):
    """Finding 7: a kernel that took every free port made jupyter_client's port pick fail with
    EADDRINUSE (an OSError), which the old Sandbox.start did not retry: the solution got 0. Any
    start failure is now retried with fresh sockets, and the kernel talks over ipc sockets in
    its own folder: no ports at all."""
    import errno

    from grading import sandbox as sb

    made: list = []

    class FirstPickFails(sb.KernelManager):
        def start_kernel(self, **kwargs):
            made.append(self)
            if len(made) == 1:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            return super().start_kernel(**kwargs)

    monkeypatch.setattr(sb, "KernelManager", FirstPickFails)
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = sb.SandboxConfig(uid=None, **({"isolation": "floor"} if _NEW_FLAGS else {}))
    with sb.Sandbox(workdir, config) as box:
        run = box.run("print(6 * 7)")
        transport = box.km.transport
    assert len(made) == 2, f"{len(made)} kernel starts"
    assert run.status == "ok", run
    assert transport == "ipc"


# ------------------------------------------------------------------ the pieces, without a kernel
def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npz_member(name: str, header: dict, body: bytes = b"", version=(1, 0)) -> bytes:
    member = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(member, header)
    else:
        member.write(np.lib.format.magic(*version) + b"\x10\x00" + b"{}".ljust(16))
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open(f"{name}.npy", "w", force_zip64=True) as f,
    ):
        f.write(member.getvalue())
        f.write(body)
    return buffer.getvalue()


def test_load_npz_reads_plain_arrays_back():
    arrays = {"a/value": np.arange(6.0).reshape(2, 3), "b": np.array("text"), "c": np.int8(3)}
    got = runner.load_npz(_npz(**arrays))
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == np.asarray(value).dtype


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_npz_member("x", {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}), "larger"),
        (  # a deflate bomb: 16 MB of zeros behind a truthful header, ~16 KB compressed
            _npz_member(
                "x", {"descr": "<f8", "fortran_order": False, "shape": (2**21,)}, bytes(2**24)
            ),
            "larger",
        ),
        (_npz(x=np.array([{}], dtype=object)), "not accepted"),
        (_npz(x=np.zeros(3, dtype=[("a", "<f8")])), "not accepted"),
        (
            _npz_member("x", {"descr": "<f8", "fortran_order": False, "shape": (4,)}, bytes(8)),
            "header says",
        ),
        (_npz_member("x", {}, version=(3, 0)), "version"),
        (b"not a zip", "not an .npz"),
    ],
    ids=["huge-header", "deflate-bomb", "object", "structured", "truncated", "npy-v3", "garbage"],
)
def test_load_npz_refuses_before_it_allocates(data, why):
    with pytest.raises(ValueError, match=why):
        runner.load_npz(data, max_bytes=2**20)


def test_any_kernel_text_becomes_reportable():
    text = gs.clean("a\ud800b\x1b[2J\x00c\td\n" + "x" * 50, limit=20)
    text.encode("utf-8")  # a lone surrogate made the old grader's report writer raise
    assert "\x1b" not in text and "\x00" not in text and len(text) == 20
    assert text.startswith("a?b[2Jc\td\n")


def test_results_file_check_refuses_what_root_did_not_write(tmp_path):
    """run_autograder runs ``python -m grading.results`` on results.json before handing it over."""
    require_root()
    path = tmp_path / "results.json"
    check = [sys.executable, "-m", "grading.results", str(path)]
    path.write_text(json.dumps({"score": 1.0, "tests": []}))
    assert subprocess.run(check, cwd=corpus.ROOT, capture_output=True).returncode == 0
    os.chown(path, 61_473, 61_473)  # what the kernel could do to a file root handed it
    assert subprocess.run(check, cwd=corpus.ROOT, capture_output=True).returncode == 1
    path.unlink()
    path.write_text('{"score": "35"}')
    assert subprocess.run(check, cwd=corpus.ROOT, capture_output=True).returncode == 1
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    assert subprocess.run(check, cwd=corpus.ROOT, capture_output=True).returncode == 1
    assert "grading.results" in build_release.RUN_AUTOGRADER


def test_kernel_memory_group_lies_inside_the_graders_own():
    """A grader that runs under a memory limit (a container's, or `make resources`' 768 MB)
    keeps its kernel under it: the kernel's group is made inside the grader's own group (a
    group at the top of the tree would escape the limit)."""
    require_root()
    top = sandbox.CGROUP_MEMORY
    if not os.access(top, os.W_OK):
        message = f"{top} (cgroup v1 memory) is not writable here"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    outer = top / f"grading-test-{os.getpid()}-{time.monotonic_ns()}"
    outer.mkdir()
    code = (
        "from grading import sandbox\n"
        "group = sandbox.memory_cgroup('inner', sandbox.SandboxConfig(uid=1))\n"
        "print(group)\n"
        "sandbox.remove_cgroup(group)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
            cwd=GRADING.parent,
            preexec_fn=lambda: (outer / "cgroup.procs").write_text(str(os.getpid())),
        )  # fmt: skip
    finally:
        for _ in range(50):  # the child may take a moment to leave
            try:
                outer.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(outer / "inner"), proc.stdout


def test_jail_and_sandbox_together_are_refused(tmp_path):
    """Red team rt9: ``--jail`` (the option's old name) silently overrode ``--sandbox``."""
    cmd = [sys.executable, "-m", "grading", str(tmp_path), str(tmp_path), str(tmp_path / "r"),
           "--sandbox", "floor", "--jail", "require"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=GRADING.parent, timeout=60)
    assert proc.returncode == 2 and "--sandbox only" in proc.stderr, proc.stderr[-500:]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- finding 6
#: Cells that are instant on their first run and sleep REPLAY_CELL_SECONDS each when replayed,
#: then a crash: 240 s of replay inside a 120 s budget. A grader whose replays ignore the budget
#: replays them all (240 s at least); this one must end once the budget is used up, plus
#: REPLAY_TEARDOWN for the last interrupt, the report and the cleanup: 150 s. The hard deadline
#: (the grader's backstop, which would hide the bug) is put past the whole replay.
#: Load cannot make it fail: the first pass sleeps nowhere, so the crash cell is reached as soon
#: as the kernel has started and the setup cell's imports are done (the old design slept 120 s
#: on the first pass, and under load the crash cell was not reached in time: issue 24); the
#: sleeps on replay take their wall time whatever the load. Why not a smaller budget: the grader
#: gives reading the upload a quarter of it, and at 60 s that (15 s) ran out with one core held
#: by a CPU hog. The cells keep the default 60 s timeout (10 s timed the setup cell out).
#: 072e724 counts replays already; to see this fail, give GRADING_UNDER_TEST a copy of grading/
#: whose restart() replays every cell with ``timeout=cell_timeout`` and no ``left()`` check (the
#: run then took 288 s against the 150 s limit; the test fails).
REPLAY_BUDGET, REPLAY_CELL_SECONDS, REPLAY_CELLS = 120.0, 10.0, 24
REPLAY_DEADLINE = REPLAY_BUDGET + REPLAY_CELLS * REPLAY_CELL_SECONDS
REPLAY_TEARDOWN = 30.0
REPLAY_TEST = "test_replays_count_against_the_time_budget"


def _grade_replay() -> _Graded:
    slow = attacks.SLOW_ON_REPLAY_CELL.format(
        marker=attacks.REPLAY_MARKER, seconds=REPLAY_CELL_SECONDS
    )
    cells = [slow] * REPLAY_CELLS + [attacks.CRASH_AFTER_MARKING]
    scale = {"budget": REPLAY_BUDGET, "deadline": REPLAY_DEADLINE}
    return grade(cells, scale=scale, companion=True)


@pytest.fixture(scope="module", autouse=True)
def replay_run(request: pytest.FixtureRequest, _root: None) -> Iterator[Future[_Graded] | None]:
    """The replay-budget grading, started when the module starts and run in the background:
    its cells sleep, so the module's other gradings use the time. The test that collects it is
    the module's last (in the middle it left its worker idle for 79 s of CI's 633)."""
    if not any(item.name == REPLAY_TEST for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(_grade_replay)


def test_replays_count_against_the_time_budget(
    replay_run: Future[_Graded] | None, record_property: Callable[[str, object], None]
) -> None:
    assert replay_run is not None
    graded = replay_run.result()
    record_property("measured", f"{graded.seconds:.0f} s with a {REPLAY_BUDGET:.0f} s budget")
    report = graded.question("Notebook report")
    assert "crashed the Python kernel" in report, report
    limit = REPLAY_BUDGET + REPLAY_TEARDOWN
    assert limit < REPLAY_CELLS * REPLAY_CELL_SECONDS  # what replaying everything costs
    assert graded.seconds < limit, (
        f"replays did not count against the time budget: the grading took "
        f"{graded.seconds:.0f} s with a {REPLAY_BUDGET:.0f} s budget (limit {limit:.0f} s)"
    )
    assert graded.results["score"] == 0
    assert not graded.owed, graded.owed
