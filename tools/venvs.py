"""Throwaway venvs for tests and benchmarks, installed by uv from one cache shared by all of them.

The Colab-versions test, the Gradescope-image test and the d3rlpy benchmark's venv each need a
fresh venv holding torch (~700 MB unpacked). pip unzips every wheel again for every venv; uv
unpacks a wheel once into its cache (``build/uv-cache``, kept between runs; ``make clean``
drops it) and hard-links the files into each venv after that, so one run unpacks torch once.
Measured 2026-12-06 on the Colab-versions set (torch + 60 packages): pip --no-compile 38 CPU-s,
uv 7.5 CPU-s from an empty cache, 1.4 CPU-s from a warm one.

uv ignores pip's configuration, so the same sources are passed to it explicitly, read from pip
itself (``pip config list``: its config files and the ``PIP_*`` environment, env first):
find-links, index URL, extra index URLs, constraints, certificate and timeout. uv then looks in no
place pip would not (``--index-strategy unsafe-best-match`` makes it pick across every index as
pip does, instead of taking the first index that has a package), and it never downloads a Python
(``UV_PYTHON_DOWNLOADS=never``): the venvs use this interpreter's base Python, as ``python -m
venv`` does.

    python tools/venvs.py build/bench-venv "torch==2.13.0" "d3rlpy==2.8.1"   # create + install
"""

from __future__ import annotations

import argparse
import ensurepip
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: One cache for every venv built here, on the same file system as build/ and /tmp on CI and this
#: machine, so uv hard-links instead of copying (it copies where it cannot link).
CACHE = ROOT / "build" / "uv-cache"


class VenvError(RuntimeError):
    """A venv could not be built: the message says what failed and what to do."""


@dataclass(frozen=True)
class PipSources:
    """Where this machine's pip looks for packages, as pip's configuration states it."""

    #: ``find-links``: folders or pages of wheels pip also considers (space-separated in pip).
    find_links: tuple[str, ...] = ()
    #: ``index-url``: the main index, PyPI when unset.
    index_url: str | None = None
    #: ``extra-index-url``: further indexes pip searches beside the main one.
    extra_index_urls: tuple[str, ...] = ()
    #: ``constraint``: constraint files applied to every install.
    constraints: tuple[str, ...] = ()
    #: ``no-index``: pip ignores every index (find-links only).
    no_index: bool = False
    #: ``cert``: the CA bundle pip trusts (uv reads it from ``SSL_CERT_FILE``).
    cert: str | None = None
    #: ``timeout``/``default-timeout`` in seconds (uv's ``UV_HTTP_TIMEOUT``).
    timeout: str | None = None

    def uv_arguments(self) -> list[str]:
        """The same sources as ``uv pip install`` options."""
        args = ["--index-strategy", "unsafe-best-match"]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_index:
            args.append("--no-index")
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for path in self.constraints:
            args += ["--constraints", path]
        return args


def parse_pip_config(listing: str) -> PipSources:
    """``pip config list`` output as :class:`PipSources`.

    Lines read ``section.key='value'``. pip lets the ``PIP_*`` environment (section ``:env:``)
    override the ``[install]`` section, which overrides ``[global]``; list values are
    whitespace-separated.
    """
    found: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        section, key = name.rsplit(".", 1)
        words = shlex.split(value)
        found.setdefault(key, {})[section] = words[0] if words else ""

    def get(*keys: str) -> str | None:
        for key in keys:
            for section in (":env:", "install", "global"):
                if section in found.get(key, {}):
                    return found[key][section]
        return None

    def many(key: str) -> tuple[str, ...]:
        return tuple((get(key) or "").split())

    no_index = (get("no-index") or "").lower() in {"1", "true", "yes", "on"}
    return PipSources(
        find_links=many("find-links"),
        index_url=get("index-url"),
        extra_index_urls=many("extra-index-url"),
        constraints=many("constraint"),
        no_index=no_index,
        cert=get("cert"),
        timeout=get("timeout", "default-timeout"),
    )


def pip_sources(python: str = sys.executable) -> PipSources:
    """What ``python``'s pip would search, read from pip's own configuration."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VenvError(f"`{python} -m pip config list` failed:\n{proc.stderr}")
    return parse_pip_config(proc.stdout)


def uv_binary() -> str:
    """The uv executable of this interpreter's environment (a dev pin of requirements.txt)."""
    try:
        from uv import find_uv_bin
    except ImportError as exc:
        raise VenvError(
            "uv is not installed in this Python: it is a dev pin of requirements.txt; "
            "run `make venv` (or `pip install uv` at requirements.txt's version)"
        ) from exc
    return find_uv_bin()


def uv_environment(sources: PipSources) -> dict[str, str]:
    """The environment uv runs in: the shared cache, no Python downloads, pip's cert and
    timeout, and no uv.toml from the working folder or the user's home."""
    env = dict(os.environ)
    env.setdefault("UV_CACHE_DIR", str(CACHE))
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_CONFIG"] = "1"
    if sources.cert and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = sources.cert
    if sources.timeout and "UV_HTTP_TIMEOUT" not in env:
        env["UV_HTTP_TIMEOUT"] = sources.timeout
    return env


def _uv(args: list[str], sources: PipSources, timeout: float) -> subprocess.CompletedProcess:
    cmd = [uv_binary(), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=uv_environment(sources), timeout=timeout
    )
    if proc.returncode != 0:
        raise VenvError(f"`{shlex.join(cmd)}` failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def create(venv: Path, *, with_pip: bool, sources: PipSources | None = None) -> Path:
    """A venv at ``venv`` on this interpreter's base Python (kept if it already exists);
    returns its python.

    ``with_pip`` installs what ``python -m venv`` would (ensurepip's bundled pip and
    setuptools, from its own wheels), for venvs where something runs pip itself.
    """
    sources = sources or pip_sources()
    python = venv / "bin" / "python"
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        _uv(["venv", "--quiet", "--python", base, str(venv)], sources, timeout=300)
    if with_pip:
        install(
            python, ensurepip_pins(), sources=sources, extra=["--find-links", str(ENSUREPIP_WHEELS)]
        )
    return python


#: The wheels ``python -m venv`` installs from (pip, and setuptools before Python 3.12).
ENSUREPIP_WHEELS = Path(ensurepip.__file__).parent / "_bundled"


def ensurepip_pins() -> list[str]:
    """``name==version`` of each wheel ensurepip bundles: what ``python -m venv`` installs."""
    names = sorted(p.name for p in ENSUREPIP_WHEELS.glob("*.whl"))
    pins = ["==".join(name.split("-")[:2]) for name in names]
    if not any(pin.startswith("pip==") for pin in pins):
        raise VenvError(f"no pip wheel in {ENSUREPIP_WHEELS}: install python3-venv")
    return pins


def install(
    python: Path,
    requirements: list[str],
    *,
    sources: PipSources | None = None,
    compile_bytecode: bool = False,
    extra: list[str] | None = None,
    timeout: float = 1800,
) -> str:
    """``uv pip install`` ``requirements`` (pins, or ``-r``/``-c`` file options) into the venv
    of ``python`` from pip's sources; returns uv's report of what it installed.

    ``compile_bytecode`` writes every module's .pyc as pip does by default (uv does not).
    """
    sources = sources or pip_sources()
    args = ["pip", "install", "--python", str(python), *sources.uv_arguments()]
    if compile_bytecode:
        args.append("--compile-bytecode")
    proc = _uv([*args, *(extra or []), *requirements], sources, timeout=timeout)
    return proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("venv", type=Path, help="the venv's folder (created if missing)")
    parser.add_argument("requirements", nargs="+", help="pins, as pip takes them")
    args = parser.parse_args(argv)
    try:
        install(create(args.venv, with_pip=False), args.requirements)
    except VenvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
