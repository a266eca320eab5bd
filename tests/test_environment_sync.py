"""requirements.txt is the one source of package versions; everything else must agree with it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sync_environment  # noqa: E402


def test_environment_yml_is_generated_from_requirements():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_environment.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_environment_yml_names_every_runtime_package_with_a_compatible_version():
    pins = sync_environment.read_pins(ROOT / "requirements.txt")
    text = (ROOT / "environment.yml").read_text()
    for name, version in pins.items():
        if name in sync_environment.DEV_ONLY:
            continue
        conda = sync_environment.CONDA_NAMES.get(name, name)
        if name in sync_environment.PIP_ONLY:
            assert f"{name}=={version}" in text, f"{name} missing from environment.yml's pip list"
            continue
        match = re.search(rf"^\s*- {re.escape(conda)}=(\S+)$", text, re.M)
        assert match, f"{conda} (pip: {name}) missing from environment.yml"
        assert version.startswith(match.group(1) + "."), (name, version, match.group(1))
    assert "pytorch-cpu" in text and re.search(r"^\s*- pytorch=", text, re.M) is None, (
        "environment.yml must ask for CPU-only PyTorch, never the CUDA build"
    )
    assert "python=3.11" in text


def test_the_running_environment_has_the_pinned_versions():
    pins = sync_environment.read_pins(ROOT / "requirements.txt")
    wrong = {}
    for name, version in pins.items():
        installed = importlib.metadata.version(name)
        if installed.split("+")[0] != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements.txt (pin, installed): {wrong}"


def test_unpinned_requirement_is_rejected(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("numpy\n")
    with pytest.raises(ValueError, match="not pinned"):
        sync_environment.read_pins(bad)
