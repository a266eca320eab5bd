"""Colab without Colab: the hand-out in a fresh venv holding Colab's package versions, not ours.

A fresh venv gets the versions Google Colab's CPU runtime ships (``COLAB`` below), then the
notebook's own first cell, unchanged, installs the support wheel uploaded beside it (what a
student on Colab does with the Files pane when the course published no link), and nbclient
runs, top to bottom:

* the untouched hand-out the way Colab runs it, without the notebook file beside the kernel:
  the public checks come from the wheel, the demos render, the checks report (and fail);
* the solution the way a JupyterHub runs a single pulled notebook (its file beside the kernel,
  no support folder): every public check passes, the demos render, the export writes the zip.

It also checks that installing the wheel left Colab's torch, numpy and matplotlib alone.
Cost (benchmarks/README.md, "Colab-versions test"): the venv's installs plus two Run Alls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_release  # noqa: E402
import sync_environment  # noqa: E402
import venvs  # noqa: E402

NAME = "offline_rl"
#: Google Colab's CPU runtime as of 2026-08-19 (googlecolab/backend-info, pip-freeze.txt at its
#: newest commit "Upgrade to Python 3.13", looked up 2026-12-06): the packages the notebook or
#: otter's checks import. Colab's Python is 3.13; this machine has 3.11 only, so the venv is
#: 3.11 with Colab's versions (each has a cp311 wheel).
COLAB = {
    "numpy": "2.1.3",
    "matplotlib": "3.10.0",
    "ipywidgets": "7.7.1",
    "widgetsnbextension": "3.6.10",
    "ipykernel": "6.17.1",
    "ipython": "7.34.0",
    "jupyter_client": "7.4.9",
    "traitlets": "5.7.1",
    "nbformat": "5.11.1",
    "nbclient": "0.10.4",
    "tqdm": "4.67.3",
    "gymnasium": "1.3.0",
    "pandas": "2.2.3",
    "h5py": "3.16.0",
    # What runs the notebook's `%pip install`: Colab's, not the older pip this Python's ensurepip
    # bundles (23.2.1, which took 19 CPU-s for the wheel's install here against 16). Colab's
    # setuptools (75.2.0) is not taken: the course's torch needs 77.0.3 or later.
    "pip": "24.1.2",
    "wheel": "0.48.0",
}
#: Colab has torch 2.11.0+cpu (from PyTorch's CPU index). PyPI serves Linux x86_64 torch only as
#: the CUDA build (its nvidia-* dependencies are gigabytes), so the venv takes the course's CPU
#: build instead, as `make venv` does: the nearest CPU build pip can get here (find-links, or
#: PyPI-compatible CPU index where that host resolves).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Packages the wheel must leave at Colab's version (a re-install there means a kernel restart).
KEPT = ("numpy", "matplotlib", "torch")

EXECUTE = """
import sys, time
sys.modules.setdefault("rfc3987_syntax", None)  # as tests/conftest.py: ~2 CPU-s at import
import nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                                 resources={"metadata": {"path": sys.argv[2]}})
start = time.perf_counter()
client.execute()
nbformat.write(nb, sys.argv[3])
print(f"EXECUTED in {time.perf_counter() - start:.1f} s")
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    tail = (proc.stdout[-3000:] + proc.stderr[-3000:]).strip()
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{tail}"
    return proc


def _versions(python: Path) -> dict[str, str]:
    out = _run([str(python), "-m", "pip", "list", "--format", "json"]).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


@pytest.fixture(scope="module")
def colab_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with Colab's versions (and the course's CPU torch); returns its python."""
    venv = tmp_path_factory.mktemp("colab") / "venv"
    # pip itself comes with Colab's versions below: the notebook's first cell runs it.
    python = venvs.create(venv, with_pip=False)
    torch = sync_environment.read_requirements(ROOT / "requirements.txt").runtime["torch"]
    index = (
        ["--extra-index-url", TORCH_CPU_INDEX]
        if sync_environment.host_resolves(TORCH_CPU_INDEX)
        else []
    )
    pins = [f"{name}=={version}" for name, version in COLAB.items()]
    # The venv must only HOLD Colab's versions: uv, from pip's sources and the cache the other
    # test venvs share, without bytecode (the modules the notebooks import compile when
    # imported). pip --no-compile took 38 CPU-s here, uv 7.5 from an empty cache and 1.4 from
    # one that holds torch (2026-12-06, tools/venvs.py).
    venvs.install(python, [*index, f"torch=={torch}", *pins])
    return python


def _outputs_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for key, value in out.get("data", {}).items():
            parts.append(key)
            parts.append(value if isinstance(value, str) else json.dumps(value))
        if out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return "\n".join(parts)


def _errors(nb: nbformat.NotebookNode) -> dict[int, str]:
    return {
        i: f"{o.ename}: {o.evalue}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.output_type == "error"
    }


def _prepare(
    notebook: Path, wheel: Path, folder: Path, cwd: Path, checks_from: Path | None = None
) -> Path:
    """The notebook unchanged (with ``checks_from``, that notebook's checks in its metadata) in
    ``folder``, and the wheel uploaded into the kernel's ``cwd``, as a student on Colab does."""
    nb = nbformat.read(notebook, as_version=4)
    if checks_from is not None:
        nb.metadata["otter"] = nbformat.read(checks_from, as_version=4).metadata["otter"]
    assert wheel.name in nb.cells[0].source, "the first cell must install the wheel"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{NAME}.ipynb"
    nbformat.write(nb, path)
    cwd.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel, cwd / wheel.name)
    return path


def _execute(python: Path, notebook: Path, cwd: Path) -> tuple[nbformat.NotebookNode, float]:
    out = notebook.with_name("executed.ipynb")
    # Colab's packages come with their bytecode; this venv has none (see colab_venv), so the
    # kernels write it for the modules they import: the first Run All compiles them, the second
    # reads them. With PYTHONDONTWRITEBYTECODE (set on some machines) each kernel compiled torch,
    # pandas, otter... again: 12 CPU-s to import them, 6 with bytecode (2026-12-06).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = _run(
        [str(python), "-c", EXECUTE, str(notebook), str(cwd), str(out)], timeout=1800, env=env
    )
    seconds = float(re.search(r"EXECUTED in ([\d.]+) s", proc.stdout).group(1))
    return nbformat.read(out, as_version=4), seconds


def _demo_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    demo = re.compile(r"widgets\.\w+_demo\(")
    return [c for c in nb.cells if c.cell_type == "code" and demo.search(c.source)]


def _check_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    check = re.compile(r'grader\.check\("q')
    return [c for c in nb.cells if c.cell_type == "code" and check.match(c.source)]


@pytest.mark.slow
@pytest.mark.early  # about 4 minutes (the venv, then two Run Alls): not at the end of the run
def test_the_hand_out_runs_on_colab_versions(colab_venv, fresh_release, tmp_path):
    before = _versions(colab_venv)
    for name, version in COLAB.items():
        assert before[name.lower().replace("_", "-")] == version, f"{name} is not Colab's"
    student = fresh_release / "student_release" / NAME
    wheels = list((student / build_release.WHEEL_DIR).glob("*.whl"))
    assert len(wheels) == 1, wheels
    timings = {}

    # 1. Colab: the untouched hand-out, no notebook file and no support folder beside the kernel.
    colab_cwd = tmp_path / "colab-content"
    untouched = _prepare(student / f"{NAME}.ipynb", wheels[0], tmp_path / "handout", colab_cwd)
    start = time.perf_counter()
    nb, timings["untouched (Colab-like)"] = _execute(colab_venv, untouched, colab_cwd)
    after = _versions(colab_venv)
    assert "offline-rl-chapter" in after, "the first cell did not install the wheel"
    for name in KEPT:
        assert after[name] == before[name], f"installing the wheel replaced Colab's {name}"
    checks_written = sorted(p.name for p in (colab_cwd / "tests").glob("q*.py"))
    assert len(checks_written) == len(_check_cells(nb)), checks_written
    errors = _errors(nb)
    export = [i for i, c in enumerate(nb.cells) if "grader.export(" in c.source]
    # Otter cannot export where it cannot read the notebook (on Colab it refuses outright):
    # students there download the .ipynb, which the grader accepts as it is.
    assert set(errors) <= set(export), errors
    for cell in _check_cells(nb):  # the checks ran from the wheel's files and reported
        assert re.search(r"q\d+\w* results:", _outputs_text(cell)), cell.source
    for cell in _demo_cells(nb):
        assert "application/vnd.jupyter.widget-view+json" in _outputs_text(cell), cell.source

    # 2. JupyterHub: the solution, pulled alone (its file beside the kernel, no support folder),
    # with the hand-out's checks: the solution notebook's metadata holds the hidden ones too.
    solution = _prepare(
        fresh_release / "autograder" / NAME / f"{NAME}-solution.ipynb",
        wheels[0],
        tmp_path / "hub",
        tmp_path / "hub",
        checks_from=student / f"{NAME}.ipynb",
    )
    nb, timings["solution (JupyterHub-like)"] = _execute(colab_venv, solution, solution.parent)
    assert not _errors(nb), _errors(nb)
    checks = _check_cells(nb)
    assert checks
    for cell in checks:
        shown = _outputs_text(cell)  # format-only checks (q10-q12) say so instead of "passed"
        assert "All test cases passed" in shown or "answer format OK" in shown, (cell.source, shown)
    assert len(_demo_cells(nb)) == 4
    for cell in _demo_cells(nb):
        assert "application/vnd.jupyter.widget-view+json" in _outputs_text(cell), cell.source
    export = solution.parent / f"{NAME}_submission.zip"
    with zipfile.ZipFile(export) as zf:
        assert f"{NAME}.ipynb" in zf.namelist()
    total = time.perf_counter() - start
    versions = {k: after[k] for k in (*KEPT, "ipywidgets", "gymnasium", "otter-grader")}
    print(f"\nColab-versions run: {timings}, both notebooks {total:.0f} s wall; {versions}")


# --------------------------------------------------------------------------- fast checks
def _spec() -> build_release.AssignmentSpec:
    return build_release.AssignmentSpec.load(ROOT / "assignments" / NAME)


def test_wheel_is_reproducible_and_holds_the_package_and_only_public_checks(
    fresh_release, tmp_path
):
    spec = _spec()
    notebook = fresh_release / "student_release" / NAME / f"{NAME}.ipynb"
    first = build_release.build_wheel(spec, notebook, tmp_path / "a")
    second = build_release.build_wheel(spec, notebook, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    assert first.name == spec.wheel_name()
    public = nbformat.read(notebook, as_version=4).metadata["otter"]["tests"]
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        for module in spec.support_modules:
            assert f"offline_rl/{module}" in names
        checks = {
            n.rsplit("/", 1)[-1][:-3] for n in names if n.startswith("offline_rl/public_checks/q")
        }
        assert checks == set(public)
        for name in names:
            assert "algorithms" not in name and "hidden" not in name, name
            text = zf.read(name).decode()
            assert "import hidden_checks" not in text, name
        info = f"offline_rl_chapter-{spec.wheel_version}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        record = zf.read(f"{info}/RECORD").decode().splitlines()
    reqs = sync_environment.read_requirements(ROOT / "requirements.txt").runtime
    assert f"Requires-Dist: otter-grader=={reqs['otter-grader']}" in metadata
    for kept in KEPT:  # Colab's own versions are kept: no pin, no re-install
        assert f"Requires-Dist: {kept}\n" in metadata
    assert {line.split(",")[0] for line in record} == names


def test_a_wheel_url_that_names_another_file_is_refused(monkeypatch):
    spec = _spec()
    wrong = f"https://course.invalid/files/{spec.wheel_name()}".replace(spec.wheel_version, "9.9.9")
    bad = build_release.AssignmentSpec(**{**spec.__dict__, "wheel_url": wrong})
    with pytest.raises(build_release.BuildError, match="must end with the wheel's file name"):
        build_release.setup_cell_source(bad)


def _run_setup_cell(monkeypatch, tmp_path, missing: set[str]) -> list[tuple[str, str]]:
    """Run the notebook's set-up cell (IPython's transform of ``%pip``) with ``missing`` not
    importable until pip runs; return the magics it called."""
    import importlib.util

    from IPython.core.inputtransformer2 import TransformerManager

    calls: list[tuple[str, str]] = []

    class Shell:
        def run_line_magic(self, name: str, line: str) -> None:
            # IPython expands {name} from the cell's namespace; the install then succeeds.
            calls.append((name, line.format(**sys._getframe(1).f_globals)))
            missing.clear()

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{NAME}.ipynb").write_text("{}")  # the laptop: the notebook beside the kernel
    code = TransformerManager().transform_cell(build_release.setup_cell_source(_published()))
    exec(code, {"get_ipython": Shell})
    return calls


def _published() -> build_release.AssignmentSpec:
    """The spec as a course that published the wheel at its own address has it."""
    spec = _spec()
    return build_release.AssignmentSpec(
        **{**spec.__dict__, "wheel_url": f"https://course.invalid/files/{spec.wheel_name()}"}
    )


def test_set_up_cell_installs_nothing_where_the_package_imports(monkeypatch, tmp_path):
    assert _run_setup_cell(monkeypatch, tmp_path, missing=set()) == []
    assert not (tmp_path / "tests").exists()


@pytest.mark.parametrize("missing", ["offline_rl", "otter", "gymnasium"])
def test_set_up_cell_pip_installs_the_wheel_url_when_a_package_is_missing(
    monkeypatch, tmp_path, missing
):
    calls = _run_setup_cell(monkeypatch, tmp_path, missing={missing})
    assert calls == [("pip", f"install --quiet {_published().wheel_url}")]
