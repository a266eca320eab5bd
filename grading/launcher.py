"""Start an IPython kernel as the unprivileged sandbox user (run by jupyter_client as root).

``python -I -S launcher.py CONFIG_JSON CONNECTION_FILE``. Both files lie in the run's root-only
launch folder; the launcher itself is a root-owned copy there. Where namespaces work it runs
inside bubblewrap (grading.sandbox.bwrap_argv: own PID/IPC/network/mount/UTS namespaces, only
CAP_SETUID and CAP_SETGID left), elsewhere directly. Still privileged, it reads both files, sets
resource limits, forbids gaining privileges (no setuid binary can raise them again) and drops to
the sandbox uid/gid with no supplementary groups. Only then does it touch the working directory,
which the sandbox user owns: it writes the connection file there *as that user*, so no root path
operation ever happens in a folder student code can change. Then it execs ipykernel. Everything
after the ``execve`` is student code: nothing privileged survives it (no open files, no saved uid,
no capabilities).

Standard library only: it runs before any sandbox environment exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
PR_SET_PDEATHSIG = 1
CLONE_NEWUSER = 0x10000000


def _limit(kind: int, value: int) -> None:
    _soft, hard = resource.getrlimit(kind)
    new = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (new, new))


def _no_new_privileges() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit(f"sandbox launcher: no_new_privs: {os.strerror(ctypes.get_errno())}")


def _no_user_namespaces(uid: int, gid: int) -> None:
    """Keep the kernel from creating user namespaces (the kernel attack surface most local
    privilege escalations need: full capabilities over new mount/network namespaces).

    Runs after the drop: the process enters a user namespace of its own that maps only its
    uid/gid to themselves (files keep their host owners), and sets that namespace's
    ``user.max_user_namespaces`` to 0, which no process inside can raise again (it needs
    capabilities in the parent namespace). The capabilities it holds in the new namespace are
    lost at ``execve`` (a non-zero uid, no_new_privs). bubblewrap's own ``--disable-userns``
    needs ``--unshare-user``, which maps a single uid onto root's and so breaks the uid drop.
    Where the machine refuses user namespaces the kernel cannot make any either: nothing to do.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    # The uid change made the process non-dumpable, which makes /proc/self/*_map root's.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    if libc.unshare(CLONE_NEWUSER) != 0:
        return
    try:
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
                f.write(text)
    except OSError as err:  # unmapped, the kernel could not even create its files
        raise SystemExit(f"sandbox launcher: user namespace map: {err}") from err
    try:
        with open("/proc/sys/user/max_user_namespaces", "w", encoding="ascii") as f:
            f.write("0")
    except OSError as err:
        # A read-only /proc/sys (some container runtimes): the kernel keeps what it had before
        # this fix rather than every grading failing. Said on the grader's stderr.
        print(f"sandbox launcher: user namespaces stay allowed: {err}", file=sys.stderr)


def _oom_first(score: int | None) -> None:
    """Make the kernel (and every process it forks, which inherits it) the OOM killer's first
    choice: when a memory group it shares with the grader fills, the kernel dies, not the grader
    that writes the report. Set while still root; unprivileged, the kernel can raise it, never
    lower it again."""
    if score is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(score))
    except OSError as err:
        print(f"sandbox launcher: oom_score_adj: {err}", file=sys.stderr)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the grader (the parent) dies, even by SIGKILL: the kernel must not run on as
    a uid no run holds any more. Set after the uid change (which clears it); kept over execve."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != parent:  # the grader died before the prctl: nothing would signal us
        raise SystemExit("sandbox launcher: the grader is gone")


#: The kernel's entry point: what ``python -m ipykernel_launcher`` runs (its cwd entry dropped
#: from sys.path; the working directory comes from PYTHONPATH), with debugpy made unimportable.
#: ipykernel imports its debugger at start when debugpy imports (~0.15 CPU-s of every grading);
#: a graded kernel is never debugged, and ipykernel takes the ImportError as "no debugger".
KERNEL_MAIN = (
    "import sys\n"
    "if sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "sys.modules['debugpy'] = None\n"
    "from ipykernel import kernelapp\n"
    "kernelapp.launch_new_instance()\n"
)


def _write_as_user(path: str, data: bytes) -> None:
    """Create ``path`` afresh (never through a link the kernel planted): runs after the drop."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def main(config_path: str, connection_file: str) -> None:
    with open(config_path, encoding="utf-8") as f:
        cfg = json.load(f)
    with open(connection_file, "rb") as f:
        connection = f.read()
    workdir = cfg["workdir"]
    uid, gid = cfg.get("uid"), cfg.get("gid")

    # Private writable memory (heap, anonymous mmaps, thread stacks): a blow-up raises
    # MemoryError in the student's cell instead of the container being killed.
    _limit(resource.RLIMIT_DATA, int(cfg["memory_bytes"]))
    _limit(resource.RLIMIT_FSIZE, int(cfg["file_bytes"]))
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NOFILE, int(cfg["open_files"]))
    _oom_first(cfg.get("oom_score_adj"))
    parent = os.getppid()
    _no_new_privileges()
    if uid is not None:
        _limit(resource.RLIMIT_NPROC, int(cfg["max_processes"]))
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise SystemExit("sandbox launcher: could not drop privileges")
        _no_user_namespaces(uid, gid)
        _die_with_parent(parent)
    # From here on nothing is privileged: the working directory belongs to the kernel anyway.
    os.umask(0o077)
    os.chdir(workdir)
    for sub in cfg["writable"]:
        os.makedirs(sub, exist_ok=True)
    conn = os.path.join(workdir, ".kernel-connection.json")
    _write_as_user(conn, connection)
    argv = [cfg["python"], "-c", KERNEL_MAIN, "-f", conn, "--HistoryManager.enabled=False"]
    # The kernel's own stdout/stderr (banner, warnings) are not the student's output: drop them.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.execve(cfg["python"], argv, cfg["env"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
