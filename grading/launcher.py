"""Start an IPython kernel as the unprivileged sandbox user (run by jupyter_client as root).

``python launcher.py CONFIG_JSON CONNECTION_FILE``. The grading process writes CONFIG_JSON; this
script, still privileged, copies the connection file into the sandbox (the kernel must read it),
sets resource limits, drops to the sandbox uid/gid and execs ipykernel. Everything after the
``execve`` is student code: nothing privileged survives it (no open files, no saved uid).

Standard library only: it runs before any sandbox environment exists.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys


def _limit(kind: int, value: int) -> None:
    _soft, hard = resource.getrlimit(kind)
    new = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (new, new))


def main(config_path: str, connection_file: str) -> None:
    with open(config_path, encoding="utf-8") as f:
        cfg = json.load(f)
    workdir = cfg["workdir"]
    conn = os.path.join(workdir, ".kernel-connection.json")
    shutil.copyfile(connection_file, conn)
    uid, gid = cfg.get("uid"), cfg.get("gid")
    if uid is not None:
        os.chown(conn, uid, gid)
    os.chmod(conn, 0o600)

    # Private writable memory (heap, anonymous mmaps, thread stacks): a blow-up raises
    # MemoryError in the student's cell instead of the container being killed.
    _limit(resource.RLIMIT_DATA, int(cfg["memory_bytes"]))
    _limit(resource.RLIMIT_FSIZE, int(cfg["file_bytes"]))
    _limit(resource.RLIMIT_CORE, 0)
    if uid is not None:
        _limit(resource.RLIMIT_NPROC, int(cfg["max_processes"]))
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("sandbox launcher: could not drop privileges")
    os.chdir(workdir)
    os.umask(0o077)
    argv = [cfg["python"], "-m", "ipykernel_launcher", "-f", conn, "--HistoryManager.enabled=False"]
    # The kernel's own stdout/stderr (banner, warnings) are not the student's output: drop them.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.execve(cfg["python"], argv, cfg["env"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
