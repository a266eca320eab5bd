"""What each grading no longer pays for, checked by what it does rather than by how long it takes
(issue 24: the solution's grading at 0.5 CPU; about 110 gradings per run of the suite).

* the grader reads an nbformat 4 notebook without importing nbformat (jsonschema: ~0.25 CPU-s
  of every grading), and still converts older notebooks with it;
* the sandboxed kernel starts without debugpy (~0.15 CPU-s), on the same ``sys.path``;
* the master's ``offline_q_learning`` stops at an exact fixed point (α = 0 reaches one in a few
  hundred of its 5,000 iterations), and returns the very table the full loop returns.
* the set-up cell's modules and the data graded code collects never import tqdm.auto (in a
  kernel: ipywidgets, ~0.07 CPU-s); a bar that is asked for still comes from it.
* a fresh uid's POSIX queues are listed once when it is taken and once when it ends (a child
  process each, ~0.02 CPU-s): the child that removes them lists what is left.
* a kernel starts without jupyter_client's scan of every distribution's entry points for its
  provisioner (~0.04 CPU-s): the grader names the LocalProvisioner.
* ``import torch`` in the kernel's environment skips its scan for device backends (~0.04 CPU-s).
* the report reads hidden_expected.npz once for all checks, not once per check (~0.02 CPU-s).
* the kernel's checks open hidden_inputs.npz once per kernel, not once per check (~0.05 CPU-s).
* stopping a kernel kills and reaps it without jupyter_client's 0.1 s poll (wall time).
* ending a uid that has no process reads /proc once, not three times (twice per grading).
* a kernel start waits for the kernel's reply and one iopub message, not for 0.2 s of silence.
* the notebook's set-up cells (torch's import) run with the cyclic GC paused (~0.3 CPU-s), then
  what they built is frozen and the answers run with collection on.

Timings are in ``benchmarks/grading_resources.py`` (``make resources``), not here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import numpy as np
import pytest
from offline_rl import behavior, envs

from grading import sandbox, submission
from grading.runner import code_cells
from tests.conftest import require_root

ROOT = Path(__file__).resolve().parents[1]
MASTER = ROOT / "assignments" / "offline_rl" / "master.py"


def _python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (what it imports is what a grading would); it must
    succeed."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _v4_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["otter"] = {"assignment_name": "offline_rl"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("# Part 2")]
    nb.cells.append(nbformat.v4.new_code_cell(["y = ", "2"]))  # a list source, as on disk
    nbformat.write(nb, path)


def test_the_grader_reads_a_v4_notebook_without_nbformat(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    _v4_notebook(sub / "offline_rl.ipynb")
    code = (
        "import sys\n"
        "import grading.__main__\n"
        "from grading.submission import find_notebook\n"
        "from grading.runner import code_cells\n"
        f"found = find_notebook({str(sub)!r}, 'offline_rl.ipynb', 'offline_rl',"
        f" {str(tmp_path / 'u')!r})\n"
        "cells, _ = code_cells(found.notebook)\n"
        "print([c.source for c in cells], [c.section for c in cells], found.notes)\n"
        "print('nbformat' in sys.modules, 'jsonschema' in sys.modules)\n"
    )
    proc = _python(code, ROOT)
    cells, imported = proc.stdout.strip().splitlines()
    assert cells == "['x = 1', 'y = 2'] ['the top of the notebook', 'Part 2'] []", cells
    assert imported == "False False", f"nbformat, jsonschema imported: {imported}"


def test_an_older_notebook_is_still_converted_by_nbformat(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    v3 = nbformat.v3.new_notebook(
        worksheets=[nbformat.v3.new_worksheet(cells=[nbformat.v3.new_code_cell(input="z = 3")])]
    )
    (sub / "offline_rl.ipynb").write_text(json.dumps(v3))
    assert json.loads((sub / "offline_rl.ipynb").read_text())["nbformat"] == 3
    found = submission.find_notebook(sub, "offline_rl.ipynb", "offline_rl", tmp_path / "u")
    cells, _ = code_cells(found.notebook)
    assert [c.source for c in cells] == ["z = 3"]


def test_a_notebook_nbformat_rejects_is_still_refused_with_its_reason(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "offline_rl.ipynb").write_text(json.dumps({"nbformat": 99, "cells": [], "metadata": {}}))
    with pytest.raises(submission.SubmissionError, match=r"not a valid notebook file.*99"):
        submission.find_notebook(sub, "offline_rl.ipynb", "offline_rl", tmp_path / "u")


def test_the_kernel_starts_without_debugpy_on_the_same_path(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "shipped_module.py").write_text("VALUE = 42\n")
    probe = (
        "import sys, shipped_module\n"
        "print(sys.modules.get('debugpy', 'absent'), sys.path[0], shipped_module.VALUE)"
    )
    config = sandbox.SandboxConfig(uid=None, isolation="floor")
    with sandbox.Sandbox(workdir, config) as box:
        run = box.run(probe)
    assert run.status == "ok", run
    # debugpy blocked (None); the working folder first on the path (PYTHONPATH, as with
    # ``python -m ipykernel_launcher``), so the shipped modules import
    assert run.stdout.split() == ["None", str(workdir), "42"], run.stdout


# --------------------------------------------------------------------------- the q3 solution
def _solution(without_early_exit: bool = False) -> Any:
    """The master's ``offline_q_learning`` (its solution cell), optionally without the exit."""
    source = MASTER.read_text()
    match = re.search(r"\ndef offline_q_learning\(.*?\n    return Q\n", source, re.S)
    assert match, "no offline_q_learning solution in the master"
    code = match.group(0)
    if without_early_exit:  # the exit's condition (the one `if` about Q_next) never holds
        code, found = re.subn(r"\n(\s+)if [^\n]*Q_next[^\n]*:\n", r"\n\1if False:\n", code)
        assert found == 1, "no single early exit on Q_next in the solution: update this test"
    calls = {"array_equal": 0}

    def array_equal(a: np.ndarray, b: np.ndarray) -> bool:
        calls["array_equal"] += 1
        return bool(np.array_equal(a, b))

    counting_np = SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("_")})
    counting_np.array_equal = array_equal
    scope: dict[str, Any] = {"np": counting_np}
    exec(code, scope)  # the instructor's own code
    return scope["offline_q_learning"], calls


DATASETS = [
    ("stitch", lambda: behavior.stitching_dataset()),
    ("stitch", lambda: behavior.stitching_dataset(3, 5)),
    ("cliff", lambda: behavior.narrow_expert_dataset("cliff", n_episodes=5, epsilon=0.2, seed=5)),
    ("open", lambda: behavior.quality_dataset("open", 0.5, 4, seed=2)),
    ("cliff", lambda: behavior.quality_dataset("cliff", 0.0, 3, seed=5)),
]


@pytest.mark.parametrize(
    "layout, make", DATASETS, ids=[f"{n}{i}" for i, (n, _) in enumerate(DATASETS)]
)
def test_the_solutions_early_exit_returns_the_full_loops_table(layout: str, make: Any) -> None:
    lay = envs.get_layout(layout)
    data = make()
    fast, calls = _solution()
    full, _ = _solution(without_early_exit=True)
    for alpha in (0.0, 1.0):
        args = (data, lay.n_states, lay.n_actions, lay.gamma)
        got, want = fast(*args, alpha=alpha), full(*args, alpha=alpha)
        np.testing.assert_array_equal(got, want, err_msg=f"alpha={alpha}")
    # The exit happened (alpha = 0): far fewer comparisons than the 5,000 iterations.
    assert 0 < calls["array_equal"] < 1_000, calls


def _never_equal_numpy() -> SimpleNamespace:
    """numpy, but ``array_equal`` always False (and counted): the loop runs every iteration."""
    calls = {"array_equal": 0}

    def array_equal(a: np.ndarray, b: np.ndarray) -> bool:
        calls["array_equal"] += 1
        return False

    fake = SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("_")})
    fake.array_equal, fake.calls = array_equal, calls
    return fake


@pytest.mark.parametrize(
    "layout, make", DATASETS, ids=[f"{n}{i}" for i, (n, _) in enumerate(DATASETS)]
)
def test_the_references_early_exit_returns_the_full_loops_table(
    layout: str, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference makes the hidden checks' expected values and proves the claims: its exit
    (α = 0) must change no bit of any table, or the release would change."""
    from offline_rl.algorithms import tabular

    lay = envs.get_layout(layout)
    args = (make(), lay.n_states, lay.n_actions, lay.gamma)
    fast = tabular.offline_q_learning(*args, alpha=0.0)
    fake = _never_equal_numpy()
    monkeypatch.setattr(tabular, "np", fake)
    full = tabular.offline_q_learning(*args, alpha=0.0)
    assert fake.calls["array_equal"] == 5_000  # the full loop ran
    np.testing.assert_array_equal(fast, full)


# --------------------------------------------------------------------------- tqdm.auto
def test_the_graded_set_up_imports_no_tqdm_auto_and_a_bar_still_shows(tmp_path: Path) -> None:
    """The set-up cell's modules and the data the graded code collects (progress off) never
    import tqdm.auto: in a kernel it imports ipywidgets (~0.07 CPU-s of every grading). A bar
    that is asked for still comes from tqdm.auto."""
    code = (
        "import sys\n"
        "from offline_rl import behavior, cartpole, datasets, envs, planning, training\n"
        "behavior.stitching_dataset()\n"
        "behavior.quality_dataset('cliff', 0.5, 3, seed=5)\n"
        "print(sorted(m for m in ('tqdm.auto', 'ipywidgets') if m in sys.modules))\n"
        "lay = envs.get_layout('open')\n"
        "datasets.collect_dataset(envs.make_grid_env(lay), behavior.random_policy(), 2, 0,"
        " progress=True, desc='BAR-SHOWN')\n"
        "print('tqdm.auto' in sys.modules)\n"
    )
    proc = _python(code, tmp_path)
    before, after = proc.stdout.strip().splitlines()
    assert before == "[]", f"imported while grading: {before}"
    assert after == "True" and "BAR-SHOWN" in proc.stderr, proc.stderr[-500:]


# --------------------------------------------------------------------------- the uid's POSIX queues
def test_a_reservation_and_its_end_list_the_uids_queues_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listing a uid's POSIX message queues takes a child process (~0.02 CPU-s each). Taking a
    fresh uid lists them once (after claiming it), and ending it once: the child that removes
    them lists what is left. Counted, not timed; that they go is tests/test_red_team.py's."""
    from grading import uids

    require_root()
    calls: list[str] = []
    real = subprocess.run

    def counting(args: Any, *rest: Any, **kwargs: Any) -> Any:
        if uids._MQUEUE_SCRIPT in args:
            calls.append("remove" if args[-1] == "1" else "list")
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(uids.subprocess, "run", counting)
    monkeypatch.setattr(uids, "sweep", lambda *a: [])  # orphans of other runs: not this test's
    with uids.reserve() as uid:
        assert uids.processes(uid) == []
    assert calls == ["list", "remove"], calls


# --------------------------------------------------------------------------- the provisioner
def test_a_kernel_starts_without_scanning_entry_points(tmp_path: Path) -> None:
    """jupyter_client finds its provisioner by reading every installed distribution's entry
    points (~0.04 CPU-s of every grading); the grader names its LocalProvisioner instead. A fresh
    process (the factory is a per-process singleton) starts a kernel and runs a cell with none."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    code = (
        "import jupyter_client.provisioning.factory as factory\n"
        "groups = []\n"
        "real = factory.entry_points\n"
        "def counting(**kw):\n"
        "    groups.append(kw.get('group'))\n"
        "    return real(**kw)\n"
        "factory.entry_points = counting\n"
        "from grading import sandbox\n"
        "config = sandbox.SandboxConfig(uid=None, isolation='floor')\n"
        f"with sandbox.Sandbox(__import__('pathlib').Path({str(workdir)!r}), config) as box:\n"
        "    run = box.run('print(6 * 7)')\n"
        "    kind = type(box.km.provisioner).__name__\n"
        "print(run.status, run.stdout.strip(), kind, groups)\n"
    )
    proc = _python(code, ROOT)
    assert proc.stdout.split() == ["ok", "42", "LocalProvisioner", "[]"], proc.stdout


def test_torch_imports_in_the_kernels_environment_without_scanning_entry_points(
    tmp_path: Path,
) -> None:
    """``import torch`` reads every distribution's entry points for device backends (~0.04
    CPU-s); the kernel's environment turns that off, and torch still computes."""
    code = (
        "import importlib.metadata as md\n"
        "groups = []\n"
        "real = md.entry_points\n"
        "def counting(**kw):\n"
        "    groups.append(kw.get('group'))\n"
        "    return real(**kw)\n"
        "md.entry_points = counting\n"
        "import torch\n"
        "print(float(torch.ones(3).sum()), groups)\n"
    )
    env = sandbox.kernel_env(tmp_path, sys.executable)
    proc = _python(code, tmp_path, env)
    assert proc.stdout.split() == ["3.0", "[]"], proc.stdout


# --------------------------------------------------------------------------- expected values
def test_a_grading_reads_the_expected_values_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring every check of the release reads hidden_expected.npz once, not once per check
    (~0.02 CPU-s per grading), and a right answer still passes every check."""
    import zipfile

    from grading import runner

    with zipfile.ZipFile(ROOT / "autograder" / "offline_rl" / "autograder.zip") as zf:
        zf.extractall(tmp_path)
    grader = runner.Grader(tmp_path)
    engine = grader.checks
    expected = engine._load(engine.EXPECTED)
    outputs: dict[str, Any] = {}
    for key, want in expected.items():  # the right answer: each expected value as the output
        path = key.replace("/expected_", "/")
        value = np.asarray(want, dtype=np.float64)
        outputs.setdefault(key.split("/")[0], {})[f"{path}/value"] = value
        outputs[key.split("/")[0]][f"{path}/shape"] = np.array(value.shape, dtype=np.int64)
    reads: list[str] = []
    real = engine._load
    monkeypatch.setattr(engine, "_load", lambda *a, **k: reads.append(str(a)) or real(*a, **k))
    checks = [c for q in grader.questions for c in q.checks]
    scored = {c: grader._score_check(c, outputs[c], outputs) for c in checks}
    assert len(checks) > 10 and all(ok for ok, _ in scored.values()), scored
    assert len(reads) == 1, f"{len(reads)} reads of the expected values for {len(checks)} checks"


def test_the_kernels_checks_parse_the_inputs_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 1 of every hidden check, as the kernel runs them one after the other, opens
    hidden_inputs.npz once (each parse of its ~300-entry directory cost ~4 ms), each check still
    reading its own inputs; a rewritten file is read afresh."""
    import os
    import shutil
    import zipfile

    sys.path.insert(0, str(ROOT / "assignments" / "offline_rl"))
    try:
        import make_fixtures
    finally:
        sys.path.pop(0)
    with zipfile.ZipFile(ROOT / "autograder" / "offline_rl" / "autograder.zip") as zf:
        zf.extractall(tmp_path)
    files = tmp_path / "files"
    engine_source = ROOT / "assignments" / "offline_rl" / "hidden_checks.py"
    shutil.copyfile(engine_source, files / "hidden_checks.py")  # this checkout's engine
    engine = make_fixtures.load_engine(files)
    opened: list[str] = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda p, *a, **k: opened.append(str(p)) or real(p, *a, **k))
    seen = {}
    for name, decl in engine.REGISTRY.items():  # no function given: each case records an error
        out = engine.CHECKS[name](*[None] * len(engine.parameters(decl)), uses=False)
        seen[name] = {k.split("/")[1] for k in out}
        assert seen[name] and all(k.startswith(f"{name}/") for k in out), out
    assert len(seen) > 10 and opened == [str(files / "hidden_inputs.npz")], opened
    os.utime(files / "hidden_inputs.npz", ns=(0, 0))  # as if rewritten
    engine.CHECKS["q10"](None, uses=False)
    assert len(opened) == 2, "a rewritten inputs file must be opened again"


# --------------------------------------------------------------------------- stopping a kernel
def test_stopping_a_kernel_does_not_poll_for_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jupyter_client's ``shutdown_kernel(now=True)`` polls every 0.1 s until the killed
    process is gone (a tenth of a second of wall time per grading at 0.5 CPU). The sandbox kills
    and reaps the kernel itself: no poll interval is slept (jupyter_client's own 0.01 s after
    every start and shutdown stays), and the process is gone."""
    import asyncio
    import os

    workdir = tmp_path / "work"
    workdir.mkdir()
    box = sandbox.Sandbox(workdir, sandbox.SandboxConfig(uid=None, isolation="floor"))
    box.start()
    assert box.run("x = 1").status == "ok"
    assert box.km is not None
    pid = box.km.provisioner.process.pid
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *args: Any) -> Any:
        sleeps.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    box.stop()
    monkeypatch.undo()
    assert not os.path.exists(f"/proc/{pid}"), "the kernel process is still there"
    assert [d for d in sleeps if d >= 0.1] == [], sleeps


def test_ending_a_uid_without_processes_looks_at_proc_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill_uid of a uid with no process reads /proc once (each look reads every process's
    status); with processes it still stops, kills and waits until none is left."""
    from grading import uids

    require_root()
    looks: list[int] = []
    real = uids.processes
    monkeypatch.setattr(uids, "processes", lambda uid: looks.append(uid) or real(uid))
    uid = 1_999_321  # above FRESH_UIDS (never drawn, never swept): nothing runs as it
    uids.kill_uid(uid)
    assert looks == [uid], looks
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], user=uid, group=uid
    )
    looks.clear()
    uids.kill_uid(uid)
    assert child.wait(timeout=10) == -9 and real(uid) == [] and len(looks) > 1, looks


def test_a_kernel_start_does_not_drain_iopub_and_loses_no_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jupyter_client's ``wait_for_ready`` ends by draining iopub until nothing comes for 0.2 s
    (0.2 s of wall time per kernel start, the kernel idle). The sandbox waits for the kernel_info
    reply and one iopub message itself; the first cell's output still arrives."""
    from jupyter_client.blocking.client import BlockingKernelClient

    used: list[str] = []
    real = BlockingKernelClient.wait_for_ready

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        used.append("wait_for_ready")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlockingKernelClient, "wait_for_ready", recording)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with sandbox.Sandbox(workdir, sandbox.SandboxConfig(uid=None, isolation="floor")) as box:
        first = box.run("print('first output')")
    assert used == [], "the start drained iopub through jupyter_client's wait_for_ready"
    assert (first.status, first.stdout) == ("ok", "first output\n"), first


# --------------------------------------------------------------------------- the set-up's GC
def test_the_set_up_cells_run_with_the_gc_paused_and_the_answers_with_it_on(
    tmp_path: Path,
) -> None:
    """The notebook's set-up cells (before its first answer cell: torch's import) run with the
    cyclic garbage collector paused (~0.3 CPU-s of every grading); then what they built is
    frozen and every answer cell runs with collection on, as in the student's own kernel."""
    import zipfile

    from grading import runner

    source = tmp_path / "source"
    with zipfile.ZipFile(ROOT / "autograder" / "offline_rl" / "autograder.zip") as zf:
        zf.extractall(source)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import gc\nSET_UP = (gc.isenabled(), gc.get_freeze_count())"),
        nbformat.v4.new_code_cell(
            "import gc\nassert SET_UP == (False, 0), SET_UP\n"
            "assert gc.isenabled() and gc.get_freeze_count() > 0, 'answers: GC off'",
            metadata={"tags": ["otter_answer_cell"]},
        ),
        nbformat.v4.new_code_cell("import gc\nassert gc.isenabled(), 'a later cell: GC off'"),
    ]
    submission = tmp_path / "submission"
    submission.mkdir()
    nbformat.write(nb, submission / "offline_rl.ipynb")
    config = runner.GradingConfig(sandbox=sandbox.SandboxConfig(uid=None, isolation="floor"))
    result = runner.Grader(source, config).grade(submission, tmp_path / "results")
    report = next(t["output"] for t in result["tests"] if t["name"] == "Notebook report")
    assert "All 3 graded code cells ran without errors." in report, report
