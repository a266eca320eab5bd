"""requirements.txt is the one source of package versions; everything else must agree with it.

The Gradescope image (environment.yml, merged by Otter into the zip's), the students'
requirements.txt and this .venv all install the same pinned wheels with CPU-only torch.
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
    assert pip == REQS.runtime_lines(), "environment.yml's pip list must be the runtime pins"


def test_the_zip_installs_the_same_pins_as_requirements_txt():
    """What Otter's setup.sh builds: our pins, plus only what Otter adds itself."""
    with zipfile.ZipFile(ZIP) as zf:
        conda, pip = _conda_and_pip(zf.read("environment.yml").decode())
    assert set(conda) == {f"python={sync_environment.PYTHON}", "pip", "jupyter_server"}, conda
    otter_own = {f"otter-grader[grading,plugins]=={REQS.runtime['otter-grader']}"}
    assert set(pip) - otter_own == set(REQS.runtime_lines()), "stale zip: run `make release`"
    assert not any(line.split("==")[0] in REQS.dev for line in pip), "dev tools in the image"


def test_students_get_the_same_pins_and_the_set_up_check():
    shipped = (STUDENT / "requirements.txt").read_text()
    assert shipped == sync_environment.render_student(REQS), "stale release: run `make release`"
    assert CPU_INDEX in shipped.splitlines()
    assert (STUDENT / "check_setup.py").is_file()
    readme = (STUDENT / "README.md").read_text()
    assert "pip install --no-compile -r requirements.txt" in readme
    assert "python check_setup.py" in readme


def test_the_running_environment_has_the_pinned_versions():
    wrong = {}
    for name, version in REQS.pins.items():
        installed = importlib.metadata.version(name)
        if installed.split("+")[0] != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements.txt (pin, installed): {wrong}"
    import torch

    assert torch.version.cuda is None, f"this .venv has a CUDA torch ({torch.__version__})"


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
