"""The student's path in a real browser: JupyterLab + Debian chromium, driven by Playwright.

One Lab server (token, temporary HOME and Jupyter dirs) serves two copies of a freshly built
release: the untouched student notebook and the solution notebook. Each gets one Run All.

1. untouched: Run All reaches the last cell; no traceback; the "waiting for your code" lines show;
2. solution: each demo's control moved to two other values; the widget is there once, its caption
   (the figure's titles as text, written by the widget) reports the state the value implies,
   computed here from reference/; the kernel is idle again; no stderr or warning output;
3. export after saving: exactly one zip, graded to full marks by the shipped grader.

Screenshots of every demo before and after each move go to ``build/browser-artifacts/`` (kept;
CI keeps the folder as an artifact when a test fails), with Demo 2 at ε = 0.5 and Demo 4 next to
the learning curves. Timings (Run All, each demo's first render and each move; the goal is a
first render within 3 s and a move within 1 s) go to ``timings.json`` there and are printed at
the end of the session: they are reported, never asserted (the machine is shared). A demo's
first render is its first figure on the page; ``_ready_s`` is the whole cell. Each move is also
timed on the browser's clock, from the first key press (a MutationObserver, no polling):
``_caption_s`` and ``_figure_s`` until the caption names the final value and until that value's
figure is on the page, ``_presses_s`` for Playwright's key presses themselves, and
``_figures_shown``, how many figures the page showed on the way (1: no value on the way drawn).
With ``CI`` set a missing chromium or Playwright fails the run; elsewhere it skips.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest

from tests.conftest import require_root

ROOT = Path(__file__).resolve().parents[1]
NAME = "offline_rl"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "build" / "browser-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RUN_ALL_TIMEOUT = 300  # s; the filled-in notebook takes about 90 s on 2 cores
MOVE_TIMEOUT = 60  # s for one slider move to redraw
STOPPED_AFTER = 10  # s of an idle kernel with unrun cells: Run All has stopped

# One JupyterLab and one Run All per notebook: every browser test on the same xdist worker.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.early,
    pytest.mark.xdist_group("browser"),
]
TIMINGS: dict[str, float] = {}


def _require_browser() -> Any:
    """Playwright's sync API, or fail (CI) / skip (elsewhere) naming what is missing."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "the playwright package (pip install -r requirements.txt)"
    if missing is None and not CHROMIUM.exists():
        missing = f"{CHROMIUM} (apt-get install chromium; .ci/run does this)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need {missing}")
        pytest.skip(f"browser tests need {missing}")
    return sync_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    release: Path
    browser: Any


@pytest.fixture(scope="session")
def lab(
    tmp_path_factory: pytest.TempPathFactory, fresh_release: Path, request: pytest.FixtureRequest
) -> Iterator[Lab]:
    sync_api = _require_browser()
    tmp = tmp_path_factory.mktemp("browser")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    # A fresh release of this checkout: the notebooks, support package and autograder.zip that
    # students and Gradescope get (the committed release may lag behind the sources).
    release = fresh_release
    root = tmp / "root"
    student = release / "student_release" / NAME
    for folder, notebook in (
        ("untouched", student / f"{NAME}.ipynb"),
        ("solution", release / "autograder" / NAME / f"{NAME}-solution.ipynb"),
    ):
        shutil.copytree(student, root / folder)
        shutil.copyfile(notebook, root / folder / f"{NAME}.ipynb")

    home, settings = tmp / "home", tmp / "user-settings"
    # No news/update pop-up; every cell in the DOM (Lab 4 virtualises long notebooks otherwise).
    lab_settings = settings / "@jupyterlab"
    _write_json(lab_settings / "apputils-extension" / "notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})  # fmt: skip
    _write_json(lab_settings / "notebook-extension" / "tracker.jupyterlab-settings",
                {"windowingMode": "none"})  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTEST"))},
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "MPLCONFIGDIR": str(tmp / "matplotlib"),
    }
    token, port = secrets.token_hex(16), _free_port()
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands, read the model
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp / "lab.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not start:\n{(tmp / 'lab.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=CHROMIUM_FLAGS,
                env={**os.environ, "HOME": str(home)},  # its crash reports stay out of ~
            )
            try:
                yield Lab(url, token, root, release, browser)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.copyfile(tmp / "lab.log", ARTIFACTS / "lab.log")
        if TIMINGS:
            (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2))
            _report_timings(request.config)


#: Goals of issue 24 for the timings whose names end so (reported beside them, not asserted).
TIMING_GOALS = {"_first_render_s": 3.0, "_move1_s": 1.0, "_move2_s": 1.0}


def _report_timings(config: pytest.Config) -> None:
    """Print the timings as a table at the end of the session (wall s, with their goals)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    reporter.write_sep("-", "browser timings (wall s on this machine, not asserted)")
    for name, seconds in TIMINGS.items():
        goal = next((g for end, g in TIMING_GOALS.items() if name.endswith(end)), None)
        verdict = ""
        if goal is not None:
            verdict = f"  goal <= {goal:g} s: {'ok' if seconds <= goal else 'over'}"
        reporter.write_line(f"{name:<44} {seconds:7.2f}{verdict}")


# --------------------------------------------------------------------------- page helpers
CELLS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const counts = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type === 'code') counts.push(cell.executionCount);
  }
  return {status: kernel ? kernel.status : 'none', counts: counts};
}"""


def _status_idle(page: Any) -> bool:
    """The status bar's kernel item reads "... | Idle" (it reads idle before a kernel exists,
    hence the model check in _run_all)."""
    return "| Idle" in " ".join(page.locator(".jp-StatusBar-Widget").all_inner_texts())


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def _open(lab: Lab, folder: str) -> Any:
    page = lab.browser.new_page(viewport={"width": 1400, "height": 1000})
    # One workspace per notebook, reset: otherwise Lab restores the other notebook's tab too.
    page.goto(
        f"{lab.url}/lab/workspaces/{folder}/tree/{folder}/{NAME}.ipynb?reset&token={lab.token}"
    )
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
        timeout=60_000,
    )
    _wait(lambda: _status_idle(page), 60, "the kernel to start (status bar '| Idle')")
    return page


def _run_all(page: Any, label: str) -> float:
    """Run All (runmenu:run-all); wait until every code cell has run and the kernel is idle."""
    start = time.monotonic()
    page.evaluate("() => window.jupyterapp.commands.execute('runmenu:run-all')")

    idle_since: list[float] = []

    def done() -> bool:
        state = page.evaluate(CELLS_JS)
        if state["status"] != "idle":
            idle_since.clear()
            return False
        if all(c is not None for c in state["counts"]):
            return True
        # Lab stops Run All at a cell that raises: the kernel then stays idle with cells unrun
        # (between two cells it is idle for well under a second).
        idle_since.append(idle_since[0] if idle_since else time.monotonic())
        if time.monotonic() - idle_since[0] > STOPPED_AFTER:
            raise AssertionError("stopped")
        return False

    try:
        _wait(done, RUN_ALL_TIMEOUT, f"Run All of the {label} notebook to reach the last cell")
    except AssertionError:
        counts = page.evaluate(CELLS_JS)["counts"]
        stuck = next(i for i, c in enumerate(counts) if c is None)
        page.screenshot(path=str(ARTIFACTS / f"{label}-run-all-stuck.png"), full_page=True)
        raise AssertionError(
            f"Run All of the {label} notebook stopped before code cell {stuck} of {len(counts)}; "
            f"red output on the page: {_error_texts(page)[:2]}"
        ) from None
    _wait(lambda: _status_idle(page), 30, "the status bar to read '| Idle'")
    seconds = time.monotonic() - start
    TIMINGS[f"run_all_{label}_s"] = round(seconds, 1)
    return seconds


def _save(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    dirty = "() => window.jupyterapp.shell.currentWidget.context.model.dirty"
    _wait(lambda: not page.evaluate(dirty), 30, "the notebook to be saved")


def _error_texts(page: Any) -> list[str]:
    """Tracebacks and stderr/warning output anywhere on the page (cells and widget outputs)."""
    selector = (
        '[data-mime-type="application/vnd.jupyter.stderr"], '
        '[data-mime-type="application/vnd.jupyter.error"], .jp-OutputArea-output .ansi-red-fg'
    )
    return [t[:300] for t in page.locator(selector).all_inner_texts()]


def _saved_outputs(notebook: Path) -> list[dict[str, Any]]:
    nb = nbformat.read(notebook, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


# The suite's one run of the whole solution notebook, demos included: Run All must reach the last
# cell (a cell that raises stops it), and the demo test below then checks that no output is red
# and that every demo ran on the solution's functions.
# Session scope: xdist may run other modules' tests between these two on the worker, and a module
# fixture would then Run All the solution (about 100 s) a second time.
@pytest.fixture(scope="session")
def solution_page(lab: Lab) -> Iterator[Any]:
    page = _open(lab, "solution")
    _run_all(page, "solution")
    yield page
    page.close()


# The untouched notebook's one page: opening a page (JupyterLab's app, the long notebook's
# markdown and math) cost ~13 CPU-s of chromium and Lab each time, and two tests use it.
@pytest.fixture(scope="session")
def untouched_page(lab: Lab) -> Iterator[Any]:
    page = _open(lab, "untouched")
    yield page
    page.close()


# --------------------------------------------------------------------------- 1. untouched
def test_untouched_notebook_run_all_reaches_the_end_and_waits_for_the_code(
    lab: Lab, untouched_page: Any
) -> None:
    page = untouched_page
    _run_all(page, "untouched")
    _save(page)
    page.screenshot(path=str(ARTIFACTS / "untouched-end.png"))
    assert not _error_texts(page), f"red output on the untouched notebook: {_error_texts(page)}"
    outputs = _saved_outputs(lab.root / "untouched" / f"{NAME}.ipynb")
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"a cell raised: {errors[0].ename}: {errors[0].evalue}"
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Traceback" not in streams, streams
    # The guided cells (CartPole, alpha plot, stitching, policy selection, offline-to-online).
    waiting = set(re.findall(r"waiting for your code \(([^)]*)\)", streams))
    assert waiting >= {"q4, q5", "q7", "q9", "q1, q3", "q3"}, waiting
    demos = page.locator(".offline-rl-demo-state").all_inner_texts()
    short = [t for t in demos if re.fullmatch(r"waiting for your code \(q\d\)", t)]
    assert len(short) == len(demos) == 4, f"each demo must wait with one short line: {demos}"


# --------------------------------------------------------------------------- 2. demos
def _cliff_greedy_return(epsilon: float, alpha: float) -> float:
    """What Demos 2 and 3 must report: the reference's greedy return on the cliff data."""
    from offline_rl.algorithms.tabular import offline_q_learning
    from offline_rl.behavior import narrow_expert_dataset
    from offline_rl.envs import get_layout
    from offline_rl.planning import greedy_policy, rollout_return

    lay = get_layout("cliff")
    data = narrow_expert_dataset("cliff", n_episodes=20, epsilon=epsilon, seed=0)
    q = offline_q_learning(data, lay.n_states, lay.n_actions, lay.gamma, alpha=alpha)
    return rollout_return(lay, greedy_policy(q))


def _quality_visited(quality: float) -> int:
    """What Demo 4 must report: states visited by the quality dataset of the first seed."""
    from offline_rl.algorithms.coverage import coverage_counts
    from offline_rl.behavior import quality_dataset
    from offline_rl.envs import get_layout

    lay = get_layout("open")
    counts = coverage_counts(quality_dataset("open", quality, 4, 0), lay.n_states, lay.n_actions)
    return int(np.sum(counts.sum(axis=1) > 0))


def _wait_caption(caption: Any, before: str, expected: list[str], what: str) -> str:
    """Wait until the caption differs from ``before`` and contains every ``expected`` part."""
    deadline = time.monotonic() + MOVE_TIMEOUT
    while True:
        text = caption.inner_text()
        if text != before and all(part in text for part in expected):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: after the move its caption reads {text!r} (before: {before!r}); "
                f"expected it to contain {expected}"
            )
        time.sleep(0.2)


@dataclass(frozen=True)
class Demo:
    name: str
    moves: tuple[tuple[str, int], tuple[str, int]]  # (key, presses) per move, from the last value
    label: Callable[[float], str]  # how the caption names slider value v (the timed wait)
    state: Callable[[float], list[str]]  # what else it must say at v (reference code, untimed)

    def expect(self, value: float) -> list[str]:
        """Every part the caption must contain at ``value``, the value's label first."""
        return [self.label(value), *self.state(value)]


# In notebook order. Each caption must name the slider's value and the state it implies. The
# timed wait looks for the value's label only: the state is computed by reference code in this
# process (0.1 CPU-s for Demos 2 and 3), after the clock stops, not while the kernel draws.
DEMOS = (
    Demo("1-online-vs-offline", (("ArrowRight", 2), ("ArrowLeft", 3)),
         lambda v: f"seed 0, {v:g} episode{'' if v == 1 else 's'}:", lambda v: ["covered"]),
    Demo("2-distribution-shift", (("ArrowRight", 2), ("ArrowRight", 3)),
         lambda v: f"ε = {v:g}:", lambda v: [f"return {_cliff_greedy_return(v, 0.0):g}"]),
    Demo("3-cql", (("ArrowRight", 3), ("ArrowRight", 2)),
         lambda v: f"α = {v:g}:", lambda v: [f"return {_cliff_greedy_return(0.0, v):g}"]),
    Demo("4-quality", (("ArrowLeft", 2), ("ArrowRight", 4)),
         lambda v: f"quality {v:.2f}", lambda v: [f"the data visit {_quality_visited(v)} state"]),
)  # fmt: skip

#: Installed in a demo's cell before a move: records, on the browser's clock, every change of
#: the demo's caption and figure (a MutationObserver: no polling, so to the millisecond).
WATCH_MOVE_JS = """(cell) => {
  const caption = cell.querySelector('.offline-rl-demo-state');
  const output = cell.querySelector('.widget-output');
  const image = () => { const img = output.querySelector('img');
                        return img ? img.src.length + ':' + img.src.slice(-40) : ''; };
  const log = {start: performance.now(), pressed: null, changes: [], before: image()};
  const note = () => log.changes.push([performance.now() - log.start, caption.innerText, image()]);
  log.observer = new MutationObserver(note);
  log.observer.observe(caption, {subtree: true, childList: true, characterData: true});
  log.observer.observe(output, {subtree: true, childList: true, attributes: true});
  window.offlineRlMoveLog = log;
}"""

#: After the move: the log (times in s from the first key press) and the observer stopped.
READ_MOVE_JS = """() => {
  const log = window.offlineRlMoveLog;
  log.observer.disconnect();
  return {pressed: log.pressed, changes: log.changes, before: log.before};
}"""


def _move_timings(log: dict[str, Any], label: str) -> dict[str, float]:
    """From a move's browser log: the key presses' duration, the time until the caption named
    the final value and until its figure was on the page (ms -> s), and the figures shown."""
    changes = log["changes"]
    out = {"presses_s": log["pressed"] / 1000}
    caption_at = next((t for t, text, _ in changes if label in text), None)
    if caption_at is None:  # the caption named the value (the test waited for it), unseen here
        return out
    out["caption_s"] = caption_at / 1000
    final_image = changes[-1][2]
    figure_at = next(t for t, _, image in changes if t >= caption_at and image == final_image)
    out["figure_s"] = figure_at / 1000
    out["figures_shown"] = len({im for _, _, im in changes if im and im != log["before"]})
    return out


def test_each_demo_redraws_once_per_move_with_the_state_its_value_implies(
    lab: Lab, solution_page: Any
) -> None:
    page = solution_page
    captions = page.locator(".offline-rl-demo-state")
    assert captions.count() == len(DEMOS), (
        f"expected {len(DEMOS)} demo widgets on the page, found {captions.count()} "
        "(a demo displayed twice, or not at all)"
    )
    assert not _error_texts(page), f"red output after Run All: {_error_texts(page)}"
    images = page.evaluate(
        "() => Array.from(document.querySelectorAll('.jp-CodeCell'))"
        ".map(cell => cell.querySelectorAll('.jp-OutputArea img').length)"
    )
    twice = {i: n for i, n in enumerate(images) if n > 1}
    assert not twice, f"code cells (index: images) showing a figure more than once: {twice}"
    for index, demo in enumerate(DEMOS):
        cell = page.locator(".jp-CodeCell").filter(has=page.locator(".offline-rl-demo-state"))
        cell = cell.nth(index)
        handles = cell.locator(".noUi-handle").count()
        assert handles == 1, f"demo {demo.name}: its cell shows {handles} sliders, expected 1"
        box = cell.locator(".jp-OutputArea").first
        box.scroll_into_view_if_needed()
        box.screenshot(path=str(ARTIFACTS / f"demo{demo.name}-0-before.png"))
        for step, (key, presses) in enumerate(demo.moves, start=1):
            before = captions.nth(index).inner_text()
            handle = cell.locator(".noUi-handle").first
            handle.focus()
            cell.evaluate(WATCH_MOVE_JS)
            start = time.monotonic()
            for _ in range(presses):
                handle.press(key)
            page.evaluate("() => { const log = window.offlineRlMoveLog;"
                          " log.pressed = performance.now() - log.start; }")  # fmt: skip
            readout = cell.locator(".widget-readout").first
            value = float(readout.inner_text())
            # Timed: until the caption names the slider's final value (not merely changes: a
            # move of several presses may show a value on the way first) and the kernel is
            # idle, polled from here (the figure reported since session 9).
            label = demo.label(value)
            _wait_caption(captions.nth(index), before, [label], f"demo {demo.name}")
            _wait(lambda: _status_idle(page), 30, "the kernel to be idle after the move")
            seconds = time.monotonic() - start
            TIMINGS[f"demo{demo.name}_move{step}_s"] = round(seconds, 2)
            # The same move on the browser's clock, from its log: when the caption named the
            # value and when that value's figure was on the page (what a student sees).
            timings = _move_timings(page.evaluate(READ_MOVE_JS), label)
            for what, amount in timings.items():
                TIMINGS[f"demo{demo.name}_move{step}_{what}"] = round(amount, 2)
            expected = demo.expect(value)
            caption = _wait_caption(captions.nth(index), before, expected, f"demo {demo.name}")
            box.screenshot(path=str(ARTIFACTS / f"demo{demo.name}-{step}-after-{value:g}.png"))
            images = cell.locator(".widget-output img")
            assert images.count() == 1, (
                f"demo {demo.name}: {images.count()} figures after the move, expected exactly 1"
            )
            assert captions.count() == len(DEMOS), "a demo widget was drawn again"
            assert "waiting" not in caption, caption
            errors = _error_texts(page)
            assert not errors, f"demo {demo.name} at {value:g} wrote stderr/warnings: {errors}"


def _code_cell_indices(page: Any, needle: str) -> list[int]:
    """Indices (among all cells) of the code cells whose source contains ``needle``."""
    sources = page.evaluate(
        "() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)"
        ".map(c => [c.type, c.sharedModel.getSource()])"
    )
    return [i for i, (kind, src) in enumerate(sources) if kind == "code" and needle in src]


def test_each_demos_first_render_is_timed(solution_page: Any) -> None:
    """Re-run each demo cell on its own and time two things a student waits for: the first
    figure (``_first_render_s``: a caption with a state and an image in the cell; Demo 4 draws
    its curves as they fill in) and the finished demo (``_ready_s``: the kernel idle again, the
    demo shown once). Reported (timings.json, the session's last lines), not asserted; what is
    asserted is that the re-run shows the demo once, with a figure and no waiting line."""
    page = solution_page
    calls = [
        ("1-online-vs-offline", "widgets.online_vs_offline_demo("),
        ("2-distribution-shift", "widgets.distribution_shift_demo("),
        ("3-cql", "widgets.cql_demo("),
        ("4-quality", "widgets.quality_demo("),
    ]
    for name, call in calls:
        found = _code_cell_indices(page, call)
        assert len(found) == 1, f"expected one cell calling {call}, found {found}"
        cell = page.locator(".jp-Notebook .jp-Cell").nth(found[0])
        before = page.evaluate(CELLS_JS)["counts"]
        # The old outputs go first (so an image seen next is the new one); the run is not
        # awaited (the command's promise ends with the execution), so the polling sees it draw.
        start = time.monotonic()
        page.evaluate(
            f"""() => {{
              const panel = window.jupyterapp.shell.currentWidget;
              panel.content.widgets[{found[0]}].model.outputs.clear();
              panel.content.activeCellIndex = {found[0]};
              void window.jupyterapp.commands.execute('notebook:run-cell');
            }}"""
        )
        first_figure: list[float] = []

        def rendered(
            cell: Any = cell,
            before: list[Any] = before,
            first_figure: list[float] = first_figure,
            start: float = start,
        ) -> bool:
            captions = cell.locator(".offline-rl-demo-state")
            if not first_figure and captions.count() >= 1:
                text = captions.first.inner_text()
                if text and "waiting" not in text and cell.locator(".widget-output img").count():
                    first_figure.append(time.monotonic() - start)
            return (page.evaluate(CELLS_JS)["counts"] != before and _status_idle(page)
                    and captions.count() == 1
                    and cell.locator(".widget-output img").count() == 1)  # fmt: skip

        _wait(rendered, MOVE_TIMEOUT, f"demo {name} to render again")
        ready = time.monotonic() - start
        TIMINGS[f"demo{name}_first_render_s"] = round(first_figure[0] if first_figure else ready, 2)
        TIMINGS[f"demo{name}_ready_s"] = round(ready, 2)
        caption = cell.locator(".offline-rl-demo-state").inner_text()
        assert caption and "waiting" not in caption, caption
        hint = cell.locator(".jp-OutputArea").first.inner_text()
        assert "What to look for" in hint, f"demo {name} has no sentence above its control"
        assert "computing" not in cell.locator(".jp-OutputArea").first.inner_text().lower()
        assert "so far" not in caption, f"demo {name} stopped before its figure was finished"


def _colours(text: str) -> dict[str, str]:
    """{method's first word: '#rrggbb'} from a caption's "colours: BC #1f77b4, naive Q ..." part."""
    assert "colours: " in text, f"no colours in the caption {text!r}"
    pairs = text.split("colours: ", 1)[1].split(" · ")[0].split(", ")
    return {pair.rsplit(" ", 1)[0].split()[0]: pair.rsplit(" ", 1)[1] for pair in pairs}


def test_methods_have_the_same_colours_in_demo4_and_the_learning_curves(
    solution_page: Any,
) -> None:
    """Read from the page: Demo 4's caption and the learning curves' caption both list their
    legend's colours (taken from the drawn matplotlib artists); each method must have one."""
    page = solution_page
    cells = page.locator(".jp-Notebook .jp-Cell")
    demo4 = cells.nth(_code_cell_indices(page, "widgets.quality_demo(")[0])
    curves = cells.nth(_code_cell_indices(page, "widgets.quality_learning_curves")[0])
    demo_colours = _colours(demo4.locator(".offline-rl-demo-state").inner_text())
    curve_text = curves.locator(".offline-rl-figure-state")
    assert curve_text.count() == 1, "the learning curves show no colour caption"
    curve_colours = _colours(curve_text.inner_text())
    assert set(demo_colours) == {"BC", "naive", "CQL"}, demo_colours
    assert curve_colours == demo_colours, f"Demo 4 {demo_colours}, curves {curve_colours}"
    # The screenshot the issue asks for: Demo 4 and the learning curves side by side (Lab's
    # notebook panel scrolls inside the page, so each output is shot on its own, then joined).
    import matplotlib.pyplot as plt

    shots = []
    for name, cell in (("demo4", demo4), ("learning-curves", curves)):
        output = cell.locator(".jp-OutputArea").first
        output.scroll_into_view_if_needed()
        path = ARTIFACTS / f"{name}-output.png"
        output.screenshot(path=str(path))
        shots.append(plt.imread(path)[..., :3])
    height = max(shot.shape[0] for shot in shots)
    padded = [np.pad(shot, ((0, height - shot.shape[0]), (0, 10), (0, 0)), constant_values=1.0)
              for shot in shots]  # fmt: skip
    plt.imsave(ARTIFACTS / "demo4-and-learning-curves.png", np.concatenate(padded, axis=1))


def test_cartpole_cell_shows_one_chart_and_a_table_that_states_the_claim(
    solution_page: Any,
) -> None:
    """Question 5's payoff as the student sees it: one bar chart, one table, no progress bar
    left behind, and the table's numbers say what the text claims (naive DQN promises more
    than it achieves; CQL returns more than naive DQN)."""
    page = solution_page
    # By the model's sources: CodeMirror puts only the lines in view into the page.
    sources = page.evaluate(
        "() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)"
        ".map(c => c.sharedModel.getSource())"
    )
    found = [i for i, source in enumerate(sources) if "CartPole from expert data" in source]
    assert len(found) == 1, f"expected one CartPole cell, found {len(found)}"
    output = page.locator(".jp-Notebook .jp-Cell").nth(found[0]).locator(".jp-OutputArea").first
    output.scroll_into_view_if_needed()
    output.screenshot(path=str(ARTIFACTS / "cartpole-cell.png"))
    assert output.locator("img").count() == 1, "the CartPole cell must show exactly one chart"
    assert output.locator("progress, .widget-hprogress").count() == 0, "a progress bar stayed"
    text = output.inner_text()
    number = r"\s+(-?[\d.]+)"
    rows = {
        m[0]: [float(x) for x in m[1:]]
        for m in re.findall(rf"^(naive DQN \(α=0\)|CQL \(α=1\)){number * 3}\s*$", text, re.M)
    }
    assert list(rows) == ["naive DQN (α=0)", "CQL (α=1)"], f"table rows not found in:\n{text}"
    (naive_return, naive_promised, naive_achieved), (cql_return, *_) = rows.values()
    assert naive_promised > naive_achieved, f"naive DQN does not overestimate here:\n{text}"
    assert cql_return > naive_return, f"CQL does not beat naive DQN here:\n{text}"


# --------------------------------------------------------------------------- 3. export
def test_export_after_saving_writes_one_zip_that_grades_to_full_marks(
    lab: Lab, solution_page: Any, tmp_path: Path
) -> None:
    page = solution_page
    folder = lab.root / "solution"
    _save(page)  # the README's order: restart and run all (the fixture), save, export
    last = page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.content.model.cells.length - 1"
    )
    code_cells = page.evaluate(
        "() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)"
        ".map((c, i) => [i, c.type, c.sharedModel.getSource()])"
    )
    exports = [i for i, kind, src in code_cells if kind == "code" and "grader.export(" in src]
    assert len(exports) == 1, f"expected one export cell, found {len(exports)}"
    export_index = exports[0]
    assert export_index <= last
    before = page.evaluate(CELLS_JS)["counts"]
    page.evaluate(
        f"""() => {{
          const panel = window.jupyterapp.shell.currentWidget;
          panel.content.activeCellIndex = {export_index};
          return window.jupyterapp.commands.execute('notebook:run-cell');
        }}"""
    )
    _wait(lambda: page.evaluate(CELLS_JS)["counts"] != before and _status_idle(page), 120,
          "the export cell to run")  # fmt: skip
    page.screenshot(path=str(ARTIFACTS / "export.png"))
    zips = sorted(p.name for p in folder.glob("*.zip"))
    assert len(zips) == 1, f"expected exactly one zip after Run All, save and export, got {zips}"
    assert not _error_texts(page), f"red output from the export: {_error_texts(page)}"
    with zipfile.ZipFile(folder / zips[0]) as zf:
        names = zf.namelist()
    assert f"{NAME}.ipynb" in names, names

    require_root()
    source, submission, results = tmp_path / "source", tmp_path / "submission", tmp_path / "out"
    with zipfile.ZipFile(lab.release / "autograder" / NAME / "autograder.zip") as zf:
        zf.extractall(source)
    submission.mkdir()
    shutil.copyfile(folder / zips[0], submission / zips[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    # Gradings share sandbox machinery (fixed uids, kill-by-uid): one at a time on this machine.
    with open("/tmp/grading.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            [sys.executable, "-m", "grading", str(source), str(submission), str(results),
             "--uid", "61250"],
            cwd=source, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    path = results / "results.json"
    assert path.exists(), f"no results.json; grader said:\n{proc.stdout}\n{proc.stderr}"
    graded = json.loads(path.read_text())
    lost = {
        t["name"]: (t["score"], t["max_score"])
        for t in graded["tests"]
        if t.get("max_score") and t["score"] != t["max_score"]
    }
    assert not lost, f"the exported solution lost points: {lost}"
    assert graded["score"] > 0


# --------------------------------------------------------------------------- 4. format-only checks
RUN_CELLS_JS = """async ([answer]) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets;
  const find = (test) => cells.findIndex((c) => test(c.model.sharedModel.getSource()));
  const answerCell = find((s) => s.startsWith('q10_answer'));
  cells[answerCell].model.sharedModel.setSource('q10_answer = "' + answer + '"');
  const order = [
    find((s) => s.includes('otter.Notebook(')),
    find((s) => s.includes('from offline_rl import')),
    answerCell,
    find((s) => s.includes('grader.check("q10_')),
  ];
  for (const index of order) {
    panel.content.activeCellIndex = index;
    await window.jupyterapp.commands.execute('notebook:run-cell');
  }
  return order[3];
}"""


def test_a_wrong_answer_to_q10_does_not_show_passed(lab: Lab, untouched_page: Any) -> None:
    """Q10's public check can test only the answer's form: for a wrong letter the page says so
    ("answer format OK: correctness is graded after you submit"), never "passed". It runs the
    cells it needs itself (otter's init, the imports, the answer, the check), so it also holds
    on a page where nothing ran before."""
    solution = (lab.release / "autograder" / NAME / f"{NAME}-solution.ipynb").read_text()
    key = re.search(r'q10_answer = \\"([abcd])\\"', solution).group(1)
    wrong = next(letter for letter in "abcd" if letter != key)
    page = untouched_page
    page.bring_to_front()  # the solution's page was opened after it
    check = page.evaluate(RUN_CELLS_JS, [wrong])
    output = page.locator(".jp-Notebook .jp-Cell").nth(check).locator(".jp-OutputArea")
    text = _wait(lambda: output.inner_text().strip(), 120, "the q10 check's output")
    page.screenshot(path=str(ARTIFACTS / "q10-wrong-answer-check.png"))
    assert "answer format OK" in text, text
    assert not re.search("passed", text, re.I), f"a wrong Q10 answer shows: {text}"
