"""The grader's trust boundary (issue 8): each attack of ``attacks.py`` against the real grader.

Each test grades a notebook with one attack appended, through ``python -m grading`` run as root
(as Gradescope runs it), from the release's ``autograder.zip`` with ``grading/`` replaced by the
package under test. Every run must also leave a valid, root-owned results.json, finish well
inside Gradescope's 10 minutes, leave nothing in its temporary folder and no live process of its
sandbox uid (``_Graded`` checks all four for every run).

To see the attacks succeed against the grader before the fix, point the tests at its copy::

    git archive 5e3036d grading | tar -x -C /tmp/old
    GRADING_UNDER_TEST=/tmp/old/grading flock /tmp/grading.lock \\
        .venv/bin/python -m pytest tests/test_trust_boundary.py
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pytest

from grading import results as gs
from grading import runner, uids
from tests.conftest import require_root
from tests.corpus import attacks, corpus
from tools import build_release

# One worker runs the module (its gradings overlap the replay-budget run, which mostly sleeps),
# handed out early: it is the longest unit of the suite.
pytestmark = [
    pytest.mark.grading,
    pytest.mark.slow,
    pytest.mark.early,
    pytest.mark.xdist_group("trust-boundary"),
]

GRADING = Path(os.environ.get("GRADING_UNDER_TEST", corpus.ROOT / "grading"))
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


def grade(
    cells: list[str],
    base: str = "blank",
    *,
    uid: int | None = None,
    scale: dict[str, float] | None = None,
    files: dict[str, bytes] | None = None,
) -> _Graded:
    """Grade ``base`` + ``cells`` and check what every run owes: a valid root-owned results.json
    in time, an empty temporary folder, no live process of the sandbox uid."""
    with tempfile.TemporaryDirectory(prefix="trust-") as tmp:
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
            (src / name).write_bytes(data)
        sub.mkdir()
        res.mkdir()  # Gradescope's harness creates it before run_autograder runs
        nbformat.write(_notebook(base, cells), sub / f"{corpus.ASSIGNMENT}.ipynb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["TMPDIR"] = str(scratch)
        cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "grading"]
        cmd += [str(src), str(sub), str(res)] + (["--uid", str(uid)] if uid is not None else [])
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.monotonic() - start
        path = res / "results.json"
        assert path.is_file() and not path.is_symlink(), f"no results.json:\n{proc.stderr[-3000:]}"
        owner = path.stat().st_uid
        results = json.loads(path.read_text(encoding="utf-8"))
        left = sorted(p.name for p in scratch.iterdir())
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
        alive = uids.processes(sandbox_uid)
        uids.kill_uid(sandbox_uid)  # never leave them to the next test, whatever the verdict
        if alive:
            owed.append(f"processes {alive} of sandbox uid {sandbox_uid} outlived the run")
    peak = int(proc.stderr.strip().splitlines()[-1]) * 1024
    return _Graded(results, seconds, peak, proc.stderr, owed)


def _only_lost(graded: _Graded, lost: set[str]) -> None:
    full = graded.full()
    expected = {q: (0.0 if q in lost else points) for q, points in full.items()}
    assert graded.scores() == expected, graded.scores()


# ------------------------------------------------------------------------------- finding 1
def test_connection_file_link_cannot_forge_results():
    graded = grade(attacks.FORGE_RESULTS)
    assert "FORGED" not in graded.text
    assert graded.results["score"] == 0, graded.scores()
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 2
def test_root_never_runs_student_code():
    site = next(p for p in sys.path if p.endswith("site-packages"))
    pth = Path(site, attacks.PTH_NAME)
    try:
        graded = grade(attacks.ROOT_VIA_PTH)
        planted = pth.exists()
    finally:
        pth.unlink(missing_ok=True)  # a planted .pth would run in every later Python
    assert "LEAKED" not in graded.text, graded.question("Notebook report")[:1500]
    assert not planted, f"student code created {pth}"
    assert graded.results["score"] == 0, graded.scores()
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 3
def test_lone_surrogate_and_control_characters_are_reported_cleanly():
    graded = grade(attacks.SURROGATE_MESSAGE)
    report = graded.question("Notebook report")
    assert "raised ValueError" in report, report
    assert "\x1b" not in graded.text and "\x00" not in graded.text
    assert len(graded.text) < 100_000, "the student's 200 000 characters reached the report"
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 4
def test_zombie_leader_with_a_live_thread_is_killed():
    # grade() fails if any live process of the uid (zombie leaders with threads included) is left
    graded = grade(attacks.ZOMBIE_LEADER, uid=61_471)
    assert graded.results["score"] == 0
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 5
def test_crashing_cell_is_not_replayed_and_costs_nothing_else():
    graded = grade(attacks.CRASH_CELL_THEN_CRASHING_CHECK, base="solution")
    _only_lost(graded, {"q2_td_target"})
    assert "crashed the Python kernel" in graded.question("q2_td_target")
    report = graded.question("Notebook report")
    assert "starting `import os; os._exit(1)`) crashed the Python kernel" in report, report
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 6
#: 50 s of slow cells, then a crash inside the 70 s budget: the old grader replayed all 50 s.
REPLAY_BUDGET, REPLAY_CELL_SECONDS = 70.0, 5.0
REPLAY_TEST = "test_replays_count_against_the_time_budget"


def _grade_replay() -> _Graded:
    cells = [attacks.SLOW_CELL.format(seconds=REPLAY_CELL_SECONDS)] * 10
    cells.append("import os; os._exit(1)")
    scale = {"budget": REPLAY_BUDGET, "deadline": REPLAY_BUDGET + 20, "cell_timeout": 10}
    return grade(cells, scale=scale)


@pytest.fixture(scope="module", autouse=True)
def replay_run(request: pytest.FixtureRequest, _root: None) -> Iterator[Future[_Graded] | None]:
    """The replay-budget grading, started when the module starts and run in the background:
    its cells sleep, so the module's other gradings use the time (the test collects it)."""
    if not any(item.name == REPLAY_TEST for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(_grade_replay)


def test_replays_count_against_the_time_budget(replay_run: Future[_Graded] | None) -> None:
    assert replay_run is not None
    graded = replay_run.result()
    assert graded.seconds < REPLAY_BUDGET + 20, (
        f"{graded.seconds:.0f} s with a {REPLAY_BUDGET:.0f} s budget"
    )
    assert "crashed the Python kernel" in graded.question("Notebook report")
    assert graded.results["score"] == 0
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 7
def test_hostile_npz_files_cost_only_their_checks_and_bounded_memory():
    graded = grade(attacks.NPZ_ATTACKS, base="solution")
    _only_lost(graded, {"q1_coverage", "q6_bcq", "q7_alpha"})
    for question in ("q1_coverage", "q6_bcq", "q7_alpha"):
        assert "could not be read" in graded.question(question), graded.question(question)
    assert graded.peak_bytes < CONTAINER_BYTES, f"peak {graded.peak_bytes / 2**20:.0f} MB"
    assert not graded.owed, graded.owed


# ------------------------------------------------------------------------------- finding 8
@pytest.fixture(scope="module")
def probed() -> list[_Graded]:
    """Two probe runs at once: what a kernel sees of the machine, and of the other run."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda _: grade(attacks.PROBES), range(2)))


def test_kernel_sees_no_checkout_and_no_reference(probed):
    for graded in probed:
        assert "LEAKED-CHECKOUT" not in graded.text, graded.question("Notebook report")
        assert "LEAKED-REFERENCE" not in graded.text, graded.question("Notebook report")
        assert "LEAKED-FOLDERS" not in graded.text, graded.question("Notebook report")
        assert graded.results["score"] == 0
        assert not graded.owed, graded.owed


def test_each_run_has_its_own_fresh_uid_and_private_scratch(probed):
    found = [
        re.search(r"PROBE uid=(\d+) workdir=(\w+) scratch_listable=(\w+)", g.text) for g in probed
    ]
    assert all(found), [g.question("Notebook report") for g in probed]
    run_uids = {int(m.group(1)) for m in found if m}
    assert len(run_uids) == 2, f"two parallel runs shared uid {run_uids}"
    assert run_uids <= set(uids.FRESH_UIDS), run_uids
    assert {m.group(2) for m in found if m} == {"0o700"}
    assert {m.group(3) for m in found if m} == {"False"}
    assert not [g.owed for g in probed if g.owed]


# ------------------------------------------------------------------------- issue 9 housekeeping
def test_kernel_that_fails_to_start_leaves_nothing_behind():
    # A module named like ipykernel's entry point, shipped in files/, shadows it in the kernel.
    graded = grade([], files={"files/ipykernel_launcher.py": b"raise SystemExit(3)\n"})
    assert graded.results["score"] == 0
    assert "failed" in graded.results["output"], graded.results["output"]
    assert not graded.owed, graded.owed


def test_kernel_that_dies_at_start_is_started_again(tmp_path, monkeypatch):
    # A kernel can die before it answers for reasons that pass (ports taken between
    # jupyter_client picking them and the kernel binding them): one failed start must not cost
    # the student the grading. Here the first kernel exits at once; the second must serve.
    from grading import sandbox

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
    with sandbox.Sandbox(workdir, sandbox.SandboxConfig(uid=None, jail="off")) as box:
        run = box.run("print(6 * 7)")
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
