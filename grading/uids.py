"""Sandbox identities: one fresh uid per grading run, and a kill that leaves none of its processes.

A uid is *fresh* when no account and no process uses it. The run holds it for its whole life
through an abstract Unix socket named after it (released by the kernel when the grader exits, so
no lock file is ever left behind); a second run on the same machine picks another uid, or, when
the uid was forced (``--uid``), waits for the first run to finish.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: Fresh uids come from this range: far above any account a distribution or Gradescope creates.
FRESH_UIDS = range(1_100_000, 1_900_000)
#: Runs inside the sandbox uid: SIGKILL everything that uid may signal, until nothing is left.
_KILLER = """
import os, signal, time
for _ in range(200):
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        break
    time.sleep(0.005)
"""


def _ids(status: str, key: str) -> set[int]:
    line = next((ln for ln in status.splitlines() if ln.startswith(key)), "")
    return {int(v) for v in line.split()[1:]}


def processes(uid: int) -> list[int]:
    """Live processes of ``uid`` (real, effective or saved). A zombie leader counts as live while
    any of its threads still runs: only a process whose every task is dead is left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if uid not in _ids((entry / "status").read_text(), "Uid:"):
                continue
            states = [
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                for task in (entry / "task").iterdir()
            ]
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if any(state not in "ZX" for state in states):
            found.append(int(entry.name))
    return found


def kill_uid(uid: int, gid: int | None = None, timeout: float = 10.0) -> None:
    """SIGKILL every process of ``uid``, then check that none is left.

    The killing is done *as* ``uid`` (``kill(-1, SIGKILL)`` reaches every process that uid owns,
    whatever /proc shows), and repeated until /proc shows no live task of the uid.

    Raises:
        RuntimeError: processes of ``uid`` still run after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = processes(uid)
        if not left:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {left} of sandbox uid {uid} survive SIGKILL")
        if os.geteuid() == 0:
            subprocess.run(
                [sys.executable, "-I", "-S", "-c", _KILLER],
                user=uid,
                group=gid if gid is not None else uid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env={},
                check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        else:  # not root: only our own uid can be killed, and not with kill(-1)
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _unused(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return not processes(uid)
    return False


def _claim(uid: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0offline-rl-grading-uid-{uid}")
    except OSError:
        sock.close()
        return None
    return sock


@contextlib.contextmanager
def reserve(uid: int | None = None, wait: float = 1800.0) -> Iterator[int]:
    """Hold a sandbox uid for one run: ``uid`` itself (waiting while another run holds it), or a
    fresh one when ``uid`` is None. On exit every process of the uid is killed."""
    sock = None
    if uid is None:
        rng = random.SystemRandom()
        for _ in range(1000):
            candidate = rng.choice(FRESH_UIDS)
            if _unused(candidate):
                sock = _claim(candidate)
                if sock is not None and _unused(candidate):
                    uid = candidate
                    break
                if sock is not None:
                    sock.close()
        if uid is None:
            raise RuntimeError(f"no free sandbox uid in {FRESH_UIDS}")
    else:
        deadline = time.monotonic() + wait
        while (sock := _claim(uid)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandbox uid {uid} is held by another grading run")
            time.sleep(0.5)
        kill_uid(uid)  # a forced uid may carry leftovers of a run that crashed
    assert sock is not None
    try:
        yield uid
    finally:
        try:
            kill_uid(uid)
        finally:
            sock.close()
