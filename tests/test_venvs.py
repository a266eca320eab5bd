"""tools/venvs.py: the tests' throwaway venvs are built by uv from the sources pip would use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sync_environment  # noqa: E402
import venvs  # noqa: E402

LISTING = """\
:env:.find-links='/env/wheels'
:env:.default-timeout='180'
global.cert='/ca.pem'
global.constraint='/c1.txt /c2.txt'
global.extra-index-url='file:///a/simple https://b.example/simple'
global.find-links='/global/wheels'
global.index-url='https://global.example/simple'
install.index-url='https://install.example/simple'
"""


def test_pip_config_is_read_as_pip_reads_it():
    sources = venvs.parse_pip_config(LISTING)
    assert sources.find_links == ("/env/wheels",)  # PIP_FIND_LINKS beats the config files
    assert sources.index_url == "https://install.example/simple"  # [install] beats [global]
    assert sources.extra_index_urls == ("file:///a/simple", "https://b.example/simple")
    assert sources.constraints == ("/c1.txt", "/c2.txt")
    assert (sources.cert, sources.timeout, sources.no_index) == ("/ca.pem", "180", False)
    args = sources.uv_arguments()
    assert args[:2] == ["--index-strategy", "unsafe-best-match"]  # every index, as pip
    pairs = list(zip(args[2::2], args[3::2]))
    assert pairs == [
        ("--find-links", "/env/wheels"),
        ("--index-url", "https://install.example/simple"),
        ("--extra-index-url", "file:///a/simple"),
        ("--extra-index-url", "https://b.example/simple"),
        ("--constraints", "/c1.txt"),
        ("--constraints", "/c2.txt"),
    ]


def test_no_index_is_kept():
    assert "--no-index" in venvs.parse_pip_config("global.no-index='true'\n").uv_arguments()


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv made by tools/venvs.py with pip (shared: one venv for this module)."""
    return venvs.create(tmp_path_factory.mktemp("venvs") / "v", with_pip=True)


def test_created_venv_has_the_pip_python_m_venv_gives(fresh_python):
    python = fresh_python
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = {p["name"]: p["version"] for p in json.loads(out)}
    assert got == dict(pin.split("==") for pin in venvs.ensurepip_pins())


def _dry_run_torch_pip(python: Path, torch: str) -> str:
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
         "--report", "-", f"torch=={torch}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)["install"][0]["metadata"]["version"]


@pytest.mark.slow
def test_uv_takes_the_torch_build_pip_takes(fresh_python):
    """This machine's pip finds the CPU torch only through its config (find-links here); uv, which
    reads no pip config, must get the same sources from tools/venvs.py and pick the same build."""
    torch = sync_environment.read_requirements(ROOT / "requirements.txt").runtime["torch"]
    python = fresh_python
    by_pip = _dry_run_torch_pip(python, torch)
    report = venvs.install(python, [f"torch=={torch}", "--no-deps", "--dry-run"])
    assert f"torch=={by_pip}" in report, f"pip takes torch {by_pip}; uv said:\n{report}"
