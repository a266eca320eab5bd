"""requirements.txt is the one source of package versions; everything else must agree with it.

The Gradescope image (environment.yml, merged by Otter into the zip's), the students'
requirements.txt and this .venv all install the same pinned wheels with CPU-only torch, and
requirements.lock pins everything those pull in at the versions this .venv has.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sync_environment  # noqa: E402

REQS = sync_environment.read_requirements(ROOT / "requirements.txt")
LOCK = sync_environment.read_requirements(sync_environment.LOCK)
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
STUDENT = ROOT / "student_release" / "offline_rl"
ZIP = ROOT / "autograder" / "offline_rl" / "autograder.zip"


def _conda_and_pip(text: str) -> tuple[list[str], list[str]]:
    deps = yaml.safe_load(text)["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    return conda, pip


def test_environment_yml_is_generated_from_requirements():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_environment.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_requirements_ask_for_cpu_torch_and_keep_dev_tools_apart():
    assert CPU_INDEX in REQS.options, "torch must come from PyTorch's CPU index, never CUDA"
    assert "torch" in REQS.runtime
    assert {"pytest", "ruff"} <= set(REQS.dev), "test tools belong under '# [dev]'"
    assert not set(REQS.dev) & set(REQS.runtime)


def test_environment_yml_is_python_from_conda_and_the_pinned_wheels_from_pip():
    conda, pip = _conda_and_pip((ROOT / "environment.yml").read_text())
    assert conda == [f"python={sync_environment.PYTHON}", "pip"], conda
    assert pip == sync_environment.image_lines(REQS, LOCK), (
        "environment.yml's pip list must be the runtime pins, then the rest of the lock"
    )
    assert set(pip) >= set(REQS.runtime_lines())
    locked = {line.split("==")[0].split("[")[0] for line in pip if "==" in line}
    assert locked == set(LOCK.runtime) | set(LOCK.image), "the image must get the whole lock"


def test_the_zip_installs_the_same_pins_as_requirements_txt():
    """What Otter's setup.sh builds: our pins, plus only what Otter adds itself."""
    with zipfile.ZipFile(ZIP) as zf:
        conda, pip = _conda_and_pip(zf.read("environment.yml").decode())
    assert set(conda) == {f"python={sync_environment.PYTHON}", "pip", "jupyter_server"}, conda
    otter_own = {f"otter-grader[grading,plugins]=={REQS.runtime['otter-grader']}"}
    assert otter_own <= set(REQS.lines("image")), "what Otter adds must be pinned and locked too"
    image = set(sync_environment.image_lines(REQS, LOCK))
    assert set(pip) - otter_own == image - otter_own, "stale zip: run `make release`"
    assert not any(line.split("==")[0] in REQS.dev for line in pip), "dev tools in the image"


def test_students_get_the_same_pins_and_the_set_up_check():
    shipped = (STUDENT / "requirements.txt").read_text()
    assert shipped == sync_environment.render_student(REQS), "stale release: run `make release`"
    assert CPU_INDEX in shipped.splitlines()
    assert f"-c {sync_environment.STUDENT_CONSTRAINTS}" in shipped.splitlines()
    constraints = (STUDENT / sync_environment.STUDENT_CONSTRAINTS).read_text()
    assert constraints == sync_environment.render_constraints(LOCK), "stale: run `make release`"
    assert (STUDENT / "check_setup.py").is_file()
    readme = (STUDENT / "README.md").read_text()
    assert "pip install --no-compile -r requirements.txt" in readme
    assert "python check_setup.py" in readme


def test_the_running_environment_has_the_pinned_and_locked_versions():
    wrong = {}
    for name, version in {**LOCK.pins, **REQS.pins}.items():
        installed = importlib.metadata.version(name)
        if installed.split("+")[0] != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from the pins or the lock: {wrong}"
    import torch

    assert torch.version.cuda is None, f"this .venv has a CUDA torch ({torch.__version__})"


def test_the_lock_is_the_closure_of_this_venv():
    """requirements.lock holds exactly the packages the pins pull in here, at the installed
    versions: a pin changed without `make lock`, or a package upgraded in .venv, fails."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_environment.py"), "--lock", "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"torch", "jinja2"} <= set(LOCK.runtime), "the closure misses packages"
    assert "gspread" in LOCK.image and "gspread" not in LOCK.runtime, "Otter's extras: image only"
    assert {"pytest", "pluggy"} <= set(LOCK.dev) and not set(LOCK.dev) & set(LOCK.runtime)


def test_the_closure_follows_dependencies_extras_and_markers():
    pytest_deps = sync_environment.closure([("pytest", "")])
    assert {"pytest", "pluggy", "iniconfig", "packaging"} <= set(pytest_deps)
    assert "colorama" not in pytest_deps, "a Windows-only dependency (sys_platform marker)"
    plain = sync_environment.closure([("otter-grader", "")])
    with_extra = sync_environment.closure([("otter-grader", ""), ("otter-grader", "plugins")])
    assert "gspread" not in plain and "gspread" in with_extra
    pins = {"otter-grader": "7.0.0"}
    reqs = sync_environment.Requirements((), pins, {}, image=dict(pins))
    assert reqs.roots("runtime") == reqs.roots("image") == [("otter-grader", "")]
    reqs.extras["image"] = {"otter-grader": "[grading,plugins]"}
    assert reqs.roots("image") == [
        ("otter-grader", ""), ("otter-grader", "grading"), ("otter-grader", "plugins")
    ]  # fmt: skip
    assert reqs.lines("image") == ["otter-grader[grading,plugins]==7.0.0"]
    assert reqs.runtime_lines() == ["otter-grader==7.0.0"], "students get no extras"


def test_unpinned_requirement_is_rejected(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("numpy\n")
    with pytest.raises(ValueError, match="not pinned"):
        sync_environment.read_pins(bad)


@pytest.mark.parametrize(
    "text, says",
    [
        ("--pre\nnumpy==2.4.6\n", "only"),
        ("numpy==2.4.6\n# [dev]\n--extra-index-url https://example.invalid/\n", "above"),
    ],
)
def test_unsupported_or_misplaced_option_is_rejected(tmp_path, text, says):
    bad = tmp_path / "requirements.txt"
    bad.write_text(text)
    with pytest.raises(ValueError, match=says):
        sync_environment.read_requirements(bad)


def test_venv_install_leaves_out_only_an_index_that_does_not_resolve(tmp_path):
    source = tmp_path / "requirements.txt"
    source.write_text(
        "--extra-index-url https://no-such-host.invalid/whl/cpu\n"
        "--find-links file:///opt/wheels\n"
        "torch==2.13.0\n"
    )
    text, dropped = sync_environment.render_installable(source)
    assert dropped == ["--extra-index-url https://no-such-host.invalid/whl/cpu"]
    assert text == "--find-links file:///opt/wheels\ntorch==2.13.0\n"
