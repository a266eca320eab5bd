"""Start an IPython kernel as the unprivileged sandbox user (run by jupyter_client as root).

``python launcher.py CONFIG_JSON CONNECTION_FILE``. Both files lie in the run's root-only folder.
This script, still privileged, reads them, shuts the kernel into a minimal view of the filesystem
when the machine allows it (a private mount namespace and ``chroot`` holding only the system
folders, the Python installation and the working directory), sets resource limits and drops to
the sandbox uid/gid. Only then does it touch the working directory, which the sandbox user owns:
it writes the connection file there *as that user*, so no root path operation ever happens in a
folder student code can change. Then it execs ipykernel. Everything after the ``execve`` is
student code: nothing privileged survives it (no open files, no saved uid).

Standard library only: it runs before any sandbox environment exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def _limit(kind: int, value: int) -> None:
    _soft, hard = resource.getrlimit(kind)
    new = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (new, new))


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fs: str | None, flags: int) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fs), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


def _traverse_only(root: str, path: str) -> None:
    """Create ``root + path`` folder by folder, each 0711: the kernel may pass, never list."""
    current = root
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.path.isdir(current):
            os.mkdir(current, 0o711)
            os.chmod(current, 0o711)  # whatever the umask


def jail(root: str, binds: list[str]) -> None:
    """Private mount namespace; a tmpfs at ``root`` with ``binds`` mounted at their own paths;
    ``chroot`` into it. Raises OSError when the machine does not allow it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below leaks to the host
    _mount(libc, "tmpfs", root, "tmpfs", 0)
    os.chmod(root, 0o755)
    for path in binds:
        target = root + path
        if os.path.isdir(path):
            _traverse_only(root, path)
        else:
            _traverse_only(root, os.path.dirname(path))
            open(target, "a").close()
        _mount(libc, path, target, None, MS_BIND | MS_REC)
    os.chdir(root)
    os.chroot(".")
    os.chdir("/")


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
    if uid is not None and cfg.get("jail_root"):
        try:
            jail(cfg["jail_root"], cfg["jail_binds"])
        except OSError as err:
            if cfg.get("jail_required"):
                raise SystemExit(f"sandbox launcher: cannot shut the kernel in: {err}") from err

    # Private writable memory (heap, anonymous mmaps, thread stacks): a blow-up raises
    # MemoryError in the student's cell instead of the container being killed.
    _limit(resource.RLIMIT_DATA, int(cfg["memory_bytes"]))
    _limit(resource.RLIMIT_FSIZE, int(cfg["file_bytes"]))
    _limit(resource.RLIMIT_CORE, 0)
    if uid is not None:
        _limit(resource.RLIMIT_NPROC, int(cfg["max_processes"]))
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise SystemExit("sandbox launcher: could not drop privileges")
    # From here on nothing is privileged: the working directory belongs to the kernel anyway.
    os.umask(0o077)
    os.chdir(workdir)
    for sub in cfg["writable"]:
        os.makedirs(sub, exist_ok=True)
    conn = os.path.join(workdir, ".kernel-connection.json")
    _write_as_user(conn, connection)
    argv = [cfg["python"], "-m", "ipykernel_launcher", "-f", conn, "--HistoryManager.enabled=False"]
    # The kernel's own stdout/stderr (banner, warnings) are not the student's output: drop them.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.execve(cfg["python"], argv, cfg["env"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
