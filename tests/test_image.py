"""The Gradescope image, emulated as far as this machine allows (slow; CI runs it).

Otter's setup.sh builds the image from the zip's own environment.yml: conda for Python, then pip
with the listed arguments. Here a fresh venv (nothing from .venv) gets exactly those pip
arguments, less only an index URL whose host does not resolve here. Then the zip's
run_autograder grades the solution and the blank student notebook under /autograder, as root,
after setup.sh's own permission step, with that venv where setup.sh puts the environment
(/root/miniforge3/envs/otter-env, the path run_autograder calls). Prints the venv's size and the
solution's peak memory (grader and kernel together) against Gradescope's 768 MB.

How the venv is built, and why that is still Gradescope's environment. setup.sh's
``pip install -r`` does two things: pip's resolver picks a version of every package, then pip
unpacks the wheels and compiles every module's bytecode. Here pip does the first itself: ``pip
install --dry-run --report`` with setup.sh's arguments, in the fresh venv with a current pip as
conda gives (``IMAGE_PIP``), states what it would install, version for version (including
torch's local ``+cpu``). uv then installs the same requirements held to exactly those versions
(``-c``), from the same sources as pip (tools/venvs.py) and the wheel cache the other test venvs
share. ``test_image_env_has_the_pins_and_cpu_torch`` checks that the venv holds pip's resolution
and nothing else, so the grading runs on what pip would have installed. What changes is only who
unpacks the same wheels: pip unzipped torch (~700 MB) for this venv alone, uv links it from the
shared cache. Of the bytecode, the venv gets what a grading reads: the kernel runs as the
sandbox user, who cannot write ``__pycache__``, so it imports .pyc files only where they were
written at install. pip writes all ~13,000; a grading imports ~1,150 of them, and a warm-up run
as root (a kernel started as the grader starts it, bytecode on: the graded cells, a failing
cell's traceback, the harvests) writes those. ``test_image_env_has_the_pins_and_cpu_torch``
then starts one the same way with bytecode off (as in a grading), runs the same in it, and
fails on any venv module it imported without its .pyc (review ta12: the check used to look at
seven packages' ``__init__`` only).
Measured 2026-12-06 (CPU-s, TEST_CPU_LOG, quiet): the venv test cost 126 with pip 23.2.1's
install, 91 with pip's resolution and uv's ``--compile-bytecode`` of the whole venv (resolve 13,
install and bytecode 66), and about 35 with the warm-up (resolve 12, install 3, warm-up 8, the
kernel's check 4).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from benchmarks.grading_resources import tree_rss_mb
from grading import launcher, runner, sandbox
from grading import results as gs
from tests.conftest import open_sandbox_paths, require_root
from tests.corpus import corpus
from tests.test_gradescope import AUTOGRADER, lay_out_autograder
from tests.test_gradescope import autograder_dir as autograder_dir  # the fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import sync_environment
import venvs

# /autograder and run_autograder's default sandbox uid: with the harness test, on one worker.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.grading,
    pytest.mark.early,
    pytest.mark.xdist_group("autograder"),
]

#: Where otter's setup.sh creates the environment, and the Python run_autograder calls.
IMAGE_ENV = Path("/root/miniforge3/envs/otter-env")
#: The pip that resolves setup.sh's arguments. environment.yml asks conda for an unpinned ``pip``,
#: so Gradescope's image gets conda-forge's current one, not the 23.2.1 this Python's ensurepip
#: bundles; a current pip is also 3x cheaper here: 12 CPU-s for the image's 162 packages, against
#: 36 for pip 23.2.1 (both resolve the same versions, 2026-12-06). Raise it with conda-forge's.
IMAGE_PIP = "26.3"
GRADESCOPE_MB = 768
#: Environment variables that stop Python writing .pyc files, or write them elsewhere.
BYTECODE_SWITCHES = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")


def image_pip_arguments() -> tuple[list[str], list[str]]:
    """The zip's environment.yml as (pip lines usable here, lines left out)."""
    with zipfile.ZipFile(corpus.ZIP) as zf:
        env = yaml.safe_load(zf.read("environment.yml"))
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    python = next(d for d in conda if d.startswith("python="))
    assert python == f"python={sys.version_info[0]}.{sys.version_info[1]}", (
        f"the image's {python} differs from this machine's Python: the emulation would not hold"
    )
    # Conda's other packages (otter adds jupyter_server) come from pip here, by the same name.
    pip = [d for d in conda if d != python and d != "pip"]
    pip += next(d["pip"] for d in deps if isinstance(d, dict))
    kept, dropped = [], []
    for line in pip:
        words = line.split()
        if words[0] in sync_environment.INDEX_OPTIONS and not sync_environment.host_resolves(
            words[-1]
        ):
            dropped.append(line)
        else:
            kept.append(line)
    return kept, dropped


def _size_mb(path: Path) -> float:
    blocks = sum(p.lstat().st_blocks for p in path.rglob("*") if not p.is_symlink())
    return blocks * 512 / 2**20


def _grade(root: Path, notebook: bytes) -> tuple[dict, float, str]:
    """run_autograder under ``root``; (results, peak MB of its process tree, its output)."""
    lay_out_autograder(root, notebook)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [str(root / "run_autograder")],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.02)
    output = proc.stdout.read().decode() if proc.stdout else ""
    results = json.loads((root / "results" / "results.json").read_text())
    return results, peak, output


@dataclass(frozen=True)
class ImageEnv:
    """The emulated image's environment."""

    #: The venv's folder (IMAGE_ENV links to it while the tests run).
    venv: Path
    #: What it cost and what was left out, for the test report.
    note: str
    #: What pip's resolver would install into the fresh venv (name: version, as pip reports).
    pip_resolved: dict[str, str]
    #: What the fresh venv held before pip's resolution (pip itself, as conda's env has it).
    preinstalled: dict[str, str]
    #: The zip, unpacked for the warm-up (its support files and hidden checks).
    unpacked: Path


@pytest.fixture(scope="module")
def image_env() -> Iterator[ImageEnv]:
    """A fresh venv built from the zip's environment.yml as pip resolves it, at the image's path."""
    require_root()
    if IMAGE_ENV.parent.parent.exists():
        pytest.fail(
            f"{IMAGE_ENV.parent.parent} exists: this test would shadow or damage it "
            "(if an interrupted run left it, remove it)"
        )
    kept, dropped = image_pip_arguments()
    # Not under pytest's 0700 tmp folder: like /root/miniforge3, the sandbox user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="image-env-"))
    folder.chmod(0o755)
    try:
        env = _build_venv(folder, kept, dropped)
        IMAGE_ENV.parent.mkdir(parents=True)
        IMAGE_ENV.symlink_to(env.venv)
        try:
            yield env
        finally:
            IMAGE_ENV.unlink()
            IMAGE_ENV.parent.rmdir()
            IMAGE_ENV.parent.parent.rmdir()
    finally:
        shutil.rmtree(folder)


def _installed(python: Path) -> dict[str, str]:
    """Every distribution in ``python``'s environment, by normalised name."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return {_canonical(n): v for n, v in json.loads(proc.stdout).items()}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: A cell that raises: a graded cell or check that fails formats a traceback (IPython's
#: ultratb imports stack_data, pygments' formatters...), which a grading of a wrong answer reads.
RAISING_CELL = "def _raises():\n    return {}['x']\n\n_raises()"


def _graded_cells() -> list[str]:
    """The sources of the cells a grading of the solution runs."""
    return [cell.source for cell in runner.code_cells(corpus.solution())[0]]


def _kernel_env(python: Path, unpacked: Path) -> dict[str, str]:
    """The sandboxed kernel's environment (``grading.sandbox.kernel_env``), in ``unpacked``."""
    files = unpacked / "files"
    (files / ".tmp").mkdir(exist_ok=True)
    env = sandbox.kernel_env(files, str(python))
    env["PYTHONPATH"] = os.pathsep.join([str(files), str(unpacked)])
    return env


def _compile_what_a_grading_imports(python: Path, scratch: Path) -> None:
    """Write, as root, the .pyc of every module of the venv that a grading imports.

    pip compiles the whole venv (~13,000 modules, 50-65 CPU-s here), but the sandboxed kernel,
    which cannot write ``__pycache__``, only reads the .pyc of what it imports. A kernel started
    as the grader starts it, with bytecode on, does what a grading does in it (the grader's
    modules, the set-up, the cells ``grading.runner.code_cells`` runs, a failing cell's
    traceback, the harvests): its imports write the .pyc files a grading reads (~1,150 of the
    venv's modules), and nothing else in the venv. ``test_image_env_has_the_pins_and_cpu_torch``
    runs the same with bytecode off and checks that every module it imports is compiled.
    """
    with zipfile.ZipFile(corpus.ZIP) as zf:
        zf.extractall(scratch)
    _, wrong = _run_as_a_grading(python, scratch, write_bytecode=True)
    assert not wrong, f"the warm-up did not run as a grading of the solution: {wrong}"


#: Run last in the kernel of ``_run_as_a_grading``: the venv's modules it imported whose .pyc is
#: missing (with bytecode off, as in a grading, the kernel writes none).
UNCOMPILED = """
import importlib.util, json, os, sys
prefix = os.path.realpath(sys.prefix)
print(json.dumps(sorted(
    name for name, module in list(sys.modules.items())
    if (path := getattr(module, "__file__", None)) and path.endswith(".py")
    and os.path.realpath(path).startswith(prefix)
    and not os.path.exists(importlib.util.cache_from_source(path))
)))
"""


def _run_as_a_grading(
    python: Path, unpacked: Path, *, write_bytecode: bool
) -> tuple[list[str], list[str]]:
    """Start a kernel as the grader does (``KERNEL_MAIN``, the kernel's environment; as root, so
    ``write_bytecode`` writes .pyc files), run what a grading runs in it (the set-up, the graded
    cells, a cell that raises, every harvest); return (venv modules it imported without .pyc,
    code that did not run as in a grading of the solution)."""
    spec = unpacked / "kernels" / "image"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [str(python), "-c", launcher.KERNEL_MAIN, "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "image", "language": "python"})
    )
    manager = KernelManager(
        kernel_name="image",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
    )
    env = _kernel_env(python, unpacked)
    if write_bytecode:  # whatever this shell says: written where pip would write it
        env = {k: v for k, v in env.items() if k not in BYTECODE_SWITCHES}
    manager.start_kernel(cwd=str(unpacked / "files"), env=env)
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=120)
        printed: list[str] = []

        def run(code: str) -> bool:
            def hook(msg: dict) -> None:
                if msg["msg_type"] == "stream":
                    printed.append(msg["content"]["text"])

            reply = client.execute_interactive(code, timeout=300, output_hook=hook)
            return reply["content"]["status"] == "ok"

        harvest = (
            "import hidden_checks, numpy, tempfile\n"
            "for name in hidden_checks.CHECKS:\n"
            "    path = tempfile.mktemp(suffix='.npz')\n"
            "    kernel_side.harvest(name, globals(), path)\n"
            "    assert '__error__' not in numpy.load(path).files, name\n"
        )
        set_up = (  # the grader's own modules too: it runs as root beside the kernel
            "import grading.__main__, grading.runner\n"
            "from grading import kernel_side\nkernel_side.install(0, pause_gc=True)"
        )
        wrong = [] if run(set_up) else ["the grader's set-up"]
        wrong += [c[:80] for c in _graded_cells() if not run(c)]
        wrong += ["the raising cell ran"] if run(RAISING_CELL) else []
        wrong += [] if run(harvest) else ["a harvest"]
        printed.clear()
        assert run(UNCOMPILED), "the module listing failed"
        return json.loads(printed[-1]), wrong
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _build_venv(folder: Path, pip_lines: list[str], dropped: list[str]) -> ImageEnv:
    venv, requirements = folder / "otter-env", folder / "requirements.txt"
    report, resolved = folder / "pip-report.json", folder / "pip-resolved.txt"
    requirements.write_text("\n".join(pip_lines) + "\n")
    sources = venvs.pip_sources()
    python = venvs.create(venv, with_pip=False, sources=sources)
    venvs.install(python, [f"pip=={IMAGE_PIP}"], sources=sources)
    preinstalled = _installed(python)
    cpu = {"start": _cpu_seconds()}
    # 1. pip resolves setup.sh's arguments, as it would before installing them.
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
         "-r", str(requirements)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, f"pip could not resolve the image's environment:\n{proc.stderr}"
    picked = {
        _canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    resolved.write_text("".join(f"{name}=={version}\n" for name, version in picked.items()))
    cpu["pip resolve"] = _cpu_seconds()
    # 2. The same requirements, held to pip's versions, unpacked as pip does.
    venvs.install(python, ["-r", str(requirements), "-c", str(resolved)], sources=sources)
    cpu["uv install"] = _cpu_seconds()
    # 3. The bytecode of every module a grading imports, as pip's compile leaves it.
    unpacked = folder / "warm-up"
    _compile_what_a_grading_imports(python, unpacked)
    cpu["bytecode"] = _cpu_seconds()
    steps = list(cpu)
    spent = ", ".join(f"{b} {cpu[b] - cpu[a]:.0f}" for a, b in itertools.pairwise(steps))
    note = (
        f"image venv {_size_mb(venv):.0f} MB; CPU-s: {spent} "
        f"from {len(pip_lines)} pip lines (left out here, unreachable: {dropped or 'none'})"
    )
    return ImageEnv(venv, note, picked, preinstalled, unpacked)


def test_image_env_has_the_pins_and_cpu_torch(image_env, record_property):
    env = image_env
    record_property("measured", env.note)
    python = env.venv / "bin" / "python"
    # The venv holds what pip would have installed, and nothing else.
    everything = _installed(python)
    expected = {**env.preinstalled, **env.pip_resolved}
    differ = {
        n: (expected.get(n), everything.get(n))
        for n in {*expected, *everything}
        if expected.get(n) != everything.get(n)
    }
    assert not differ, f"the venv is not pip's resolution (pip's, installed): {differ}"
    reqs = sync_environment.read_requirements(
        Path(__file__).resolve().parents[1] / "requirements.txt"
    )
    lock = sync_environment.read_requirements(sync_environment.LOCK)
    want = {**lock.runtime, **lock.image, **reqs.runtime}  # what the tests ran with, every one
    wrong = {
        n: (v, everything.get(_canonical(n)))
        for n, v in want.items()
        if everything.get(_canonical(n), "").split("+")[0] != v
    }
    assert not wrong, f"the image installs other versions (pinned or locked, installed): {wrong}"
    dev = [n for n in reqs.dev if _canonical(n) in everything]
    assert not dev, f"dev-only packages reached the image: {dev}"
    # CPU torch (-B: this check writes no bytecode itself).
    cuda = subprocess.run(
        [str(python), "-B", "-c", "import torch; print(torch.version.cuda)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert cuda == "None", f"the image got a CUDA torch (cuda {cuda})"
    # Bytecode where a grading reads it: the sandboxed kernel cannot write __pycache__, so every
    # venv module it imports must have its .pyc, as pip's full compile leaves it.
    uncompiled, wrong = _run_as_a_grading(python, env.unpacked, write_bytecode=False)
    assert not wrong, f"the check's kernel did not run as a grading of the solution: {wrong}"
    assert not uncompiled, f"a grading imports modules without bytecode: {uncompiled}"


@pytest.mark.usefixtures("autograder_dir")
def test_solution_full_marks_and_blank_zero_in_the_emulated_image(
    image_env, record_property, request
):
    # setup.sh's own permission step, run as written in the zip (after otter's lines).
    setup = zipfile.ZipFile(corpus.ZIP).read("setup.sh").decode()
    step = setup.split("# Added by tools/build_release.py", 1)[1]
    # The step changes /root's entries on this machine as on Gradescope: put them back after.
    modes = {p: p.lstat().st_mode & 0o7777 for p in (Path("/root"), *Path("/root").iterdir())}
    request.addfinalizer(lambda: [os.chmod(p, m) for p, m in modes.items() if p.exists()])
    subprocess.run(["bash", "-euc", step], check=True)
    python = IMAGE_ENV / "bin" / "python"
    closed = open_sandbox_paths.closed_folders({str(python), str(python.resolve())})
    assert not closed, f"after setup.sh the sandbox user still cannot reach Python: {closed}"

    solution = nbformat.writes(corpus.solution()).encode()
    results, peak, output = _grade(AUTOGRADER, solution)
    assert gs.validate(results) == [], gs.validate(results)
    assert results["score"] == sum(corpus.full_marks(results).values()) > 0, output[-3000:]
    assert corpus.question_scores(results) == corpus.full_marks(results), output[-3000:]
    record_property(
        "measured",
        f"solution in the emulated image: {results['score']:g} points, "
        f"{results['execution_time']:.0f} s, peak RSS (grader + kernel) {peak:.0f} MB "
        f"of Gradescope's {GRADESCOPE_MB} MB",
    )
    assert peak < GRADESCOPE_MB, f"peak {peak:.0f} MB: Gradescope would kill the grader"

    blank = nbformat.writes(corpus.student()).encode()
    results, _, output = _grade(AUTOGRADER, blank)
    assert gs.validate(results) == [], gs.validate(results)
    assert results["score"] == 0, output[-3000:]
    assert set(corpus.question_scores(results)) == set(corpus.full_marks(results)), output[-3000:]
    record_property("measured", f"blank notebook in the emulated image: {results['score']:g}")
