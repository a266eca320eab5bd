"""Sandbox identities: one fresh uid per grading run, and an end that leaves nothing of it.

A uid is *fresh* when no account, process, SysV IPC object or file in a shared temporary folder
belongs to it. The run holds it for its whole life through an abstract Unix socket named after it
(released by the kernel when the grader exits, so no lock file is ever left behind); a second run
on the same machine picks another uid, or, when the uid was forced (``--uid``), waits for the
first run to finish.

Ending a uid is done by root alone: nothing ever runs as the sandbox uid outside the sandbox (a
helper of that uid would be a process the kernel can stop, trace or kill). Root stops every
process of the uid until a pass finds none left running, kills them all, then removes the uid's
SysV IPC objects and its files in /dev/shm, /dev/mqueue, /tmp and /var/tmp.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: Fresh uids come from this range: far above any account a distribution or Gradescope creates.
FRESH_UIDS = range(1_100_000, 1_900_000)
#: Shared folders where any user may leave files (sticky, world-writable): searched for the
#: uid's leftovers. Only world-writable folders below them are entered, at most this many.
#: (``find / -xdev -type d -perm -0002`` on the grading image lists /tmp, /var/tmp, /run/lock.)
SHARED_DIRS = ("/dev/shm", "/dev/mqueue", "/tmp", "/var/tmp", "/run/lock", "/var/lock")
MAX_SHARED_FOLDERS = 1_000
#: Seconds the removal of a uid's shared files may take; what is left then keeps the uid from
#: ever being handed out again (``_unused``), and is reported.
CLEAN_SECONDS = 30.0
IPC_RMID = 0
#: /proc/sysvipc tables and the libc call that removes an object of each.
SYSV_TABLES = {"shm": "shmctl", "sem": "semctl", "msg": "msgctl"}


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


def _running(pid: int) -> bool:
    """Whether any task (thread) of ``pid`` is neither stopped nor dead."""
    try:
        states = [
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in Path(f"/proc/{pid}/task").iterdir()
        ]
    except (OSError, IndexError):
        return False
    return any(state not in "TtZX" for state in states)


def kill_uid(uid: int, timeout: float = 10.0) -> None:
    """End every process of ``uid``, as root, from outside: never through a process of the uid.

    SIGSTOP every process of the uid until two passes in a row find all of them stopped (a
    stopped process cannot fork; the second pass sees any child forked just before its parent
    stopped), then SIGKILL them all, and wait until /proc shows none.

    Raises:
        RuntimeError: processes of ``uid`` are still alive after ``timeout`` seconds.
    """
    if os.geteuid() not in (0, uid):  # not root: only our own processes could be signalled
        raise RuntimeError(f"cannot end the processes of uid {uid} without root")
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        left = processes(uid)
        if not left and quiet == 0:
            # None at all on the first look: with no process of the uid nothing can fork one (only
            # root could start one as the uid, and no kernel starts while it is ended). Each more
            # look reads every /proc/PID/status (~10 ms here; twice per grading).
            return
        running = [pid for pid in left if _running(pid)]
        for pid in running:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        quiet = quiet + 1 if not running else 0
    while True:
        left = processes(uid)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not left:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {left} of sandbox uid {uid} survive SIGKILL")
        time.sleep(0.01)


def ipc_objects(uid: int) -> list[tuple[str, int]]:
    """The SysV IPC objects (kind, id) that ``uid`` owns or created, in this IPC namespace."""
    found = []
    for kind in SYSV_TABLES:
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        except OSError:
            continue
        header = lines[0].split() if lines else []
        # "key shmid perms ..." (semid, msqid for the others): the id is the second column.
        if len(header) < 2 or not header[1].endswith("id") or not {"uid", "cuid"} <= {*header}:
            raise RuntimeError(f"/proc/sysvipc/{kind} has an unknown layout: {header}")
        col = {"id": 1, "uid": header.index("uid"), "cuid": header.index("cuid")}
        for line in lines[1:]:
            fields = line.split()
            with contextlib.suppress(IndexError, ValueError):
                if uid in (int(fields[col["uid"]]), int(fields[col["cuid"]])):
                    found.append((kind, int(fields[col["id"]])))
    return found


def shared_files(uid: int) -> list[str]:
    """Files and folders of ``uid`` in the shared temporary folders (SHARED_DIRS) and in the
    world-writable folders below them that *root* owns (its own are removed whole).

    Only root's folders are entered: every folder on a returned path is then root's, so no
    other user can swap one for a link between this look and the removal (a folder another
    run's kernel owns could become a link to ``/`` just before ``rm -rf`` went through it)."""
    found: list[str] = []
    todo = [d for d in SHARED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    entered = 0
    while todo and entered < MAX_SHARED_FOLDERS:
        folder = todo.pop()
        entered += 1
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_uid == uid:
                found.append(entry.path)
            elif stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH and info.st_uid == 0:
                todo.append(entry.path)
    return found


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` whatever the kernel did to it: any depth, any names, any permissions
    (root ignores them), links never followed, no other file system entered.

    ``rm -rf`` walks with fts (no recursion limit, unlike ``shutil.rmtree``, which a 1500-deep
    tree crashed with RecursionError). Raises RuntimeError when anything is left.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    subprocess.run(
        ["/bin/rm", "-rf", "--one-file-system", "--", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )
    if os.path.lexists(path):
        raise RuntimeError(f"could not remove {path}")


def _remove_ipc(kind: str, ident: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(libc, SYSV_TABLES[kind])
    if kind == "sem":
        call(ident, 0, IPC_RMID, None)
    else:
        call(ident, IPC_RMID, None)


def _purge(parent_fd: int, name: str, uid: int, deadline: float) -> None:
    """Remove ``name`` (in the folder ``parent_fd``) if ``uid`` owns it, in this process: files
    with one ``unlinkat`` each, folders bottom-up, never following a link, never leaving the file
    system. Entries of other users are never removed: a folder of the uid that still holds some
    is handed to root (``fchown`` 0:0, mode 0755) instead, so its owner's files stay where they
    are and nothing of the uid remains. Stops at ``deadline`` (a ``time.monotonic`` value).

    One directory fd is open at a time (a 1500-deep tree needs no recursion and no 1500 fds): it
    walks down by name and up by ``..``, checking each step's (device, inode) against the way
    down, so a folder moved meanwhile is never mistaken for its parent.
    """
    info = os.lstat(name, dir_fd=parent_fd)
    if info.st_uid != uid:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    dev = info.st_dev
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=parent_fd)
    way = [(os.fstat(parent_fd).st_dev, os.fstat(parent_fd).st_ino)]
    names = [name]
    try:
        while True:
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) != (info.st_dev, info.st_ino) and len(names) == 1:
                return  # swapped before we opened it: leave it
            sub = None
            kept = 0
            with os.scandir(fd) as entries:
                for entry in entries:
                    if time.monotonic() > deadline:
                        return
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if st.st_uid != uid:
                            kept += 1
                        elif stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                            sub = sub or entry.name
                        elif stat.S_ISDIR(st.st_mode):
                            kept += 1  # another file system mounted there: not ours to enter
                        else:
                            os.unlink(entry.name, dir_fd=fd)
                    except FileNotFoundError:
                        continue
            if sub is not None:  # down into the next folder of the uid
                child = os.open(sub, flags, dir_fd=fd)
                way.append((here.st_dev, here.st_ino))
                names.append(sub)
                os.close(fd)
                fd = child
                continue
            # Nothing of the uid left below: remove this folder, or give it to root.
            if kept:
                os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o755)
            up = os.open("..", flags, dir_fd=fd)
            above = os.fstat(up)
            os.close(fd)
            fd = up
            if (above.st_dev, above.st_ino) != way[-1]:
                return  # the tree was moved meanwhile: stop, the leftovers are reported
            way.pop()
            gone = names.pop()
            if not kept:
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(gone, dir_fd=fd)
            if not names:
                return
            info = os.fstat(fd)
    finally:
        os.close(fd)


def remove_shared(uid: int, seconds: float = CLEAN_SECONDS) -> None:
    """Remove the uid's files and folders in the shared folders (see ``_purge``), in this
    process, within ``seconds``. Nothing of another user is removed."""
    deadline = time.monotonic() + seconds
    for path in shared_files(uid):
        if time.monotonic() > deadline:
            return
        parent, name = os.path.split(path)
        try:
            folder = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            _purge(folder, name, uid, deadline)
        except OSError:
            continue  # reported by leftovers()
        finally:
            os.close(folder)


#: Lists (and removes) a uid's POSIX message queues: mqueue is mounted in a private mount
#: namespace of a child, so the host never gets a mount and the queues of the host's IPC
#: namespace show as files (the floor's kernel shares it).
_MQUEUE_SCRIPT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, remove = int(sys.argv[1]), sys.argv[2] == "1"
if libc.unshare(0x20000) != 0:  # CLONE_NEWNS
    raise SystemExit(2)
libc.mount(b"none", b"/", None, 0x40000 | 0x4000, None)  # MS_PRIVATE | MS_REC
where = "/tmp"  # hidden only in this child's private mount namespace
if libc.mount(b"mqueue", where.encode(), b"mqueue", 0, None) != 0:
    raise SystemExit(2)
def owned():
    return [n for n in os.listdir(where) if os.lstat(os.path.join(where, n)).st_uid == uid]
if remove:  # then list what is left, in the same child (one process per clean-up, not two)
    for name in owned():
        os.unlink(os.path.join(where, name))
for name in owned():
    print(name)
"""


def posix_queues(uid: int, remove: bool = False) -> list[str]:
    """The POSIX message queues ``uid`` owns in this IPC namespace; with ``remove``, those
    still there after removing them all. Empty when mqueue cannot be mounted here (not root, no
    mount namespace)."""
    if os.geteuid() != 0:
        return []
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _MQUEUE_SCRIPT, str(uid), "1" if remove else "0"],
            capture_output=True,
            text=True,
            timeout=30,
            env={},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [f"POSIX queue /{n}" for n in proc.stdout.split() if proc.returncode == 0]


def clean_uid(uid: int) -> list[str]:
    """Remove what ``uid`` may leave outside its working folder: SysV IPC objects, POSIX message
    queues and its files in the shared temporary folders. Call after kill_uid (nothing of the
    uid runs any more, so nothing can make another queue). Returns the POSIX queues still there
    (listed by the child that removed them: each child costs ~0.02 CPU-s of every grading)."""
    if os.geteuid() != 0:
        return []
    for kind, ident in ipc_objects(uid):
        _remove_ipc(kind, ident)
    queues = posix_queues(uid, remove=True)
    remove_shared(uid)
    return queues


def leftovers(uid: int, queues: list[str] | None = None) -> list[str]:
    """Everything of ``uid`` that is still there: processes, IPC objects, shared files, POSIX
    queues (``queues``: what ``clean_uid`` just found left, instead of listing them again)."""
    left = [f"process {pid}" for pid in processes(uid)]
    left += [f"SysV {kind} {ident}" for kind, ident in ipc_objects(uid)]
    left += shared_files(uid)
    left += posix_queues(uid) if queues is None else queues
    return left


def end_uid(uid: int) -> None:
    """Kill, clean, and check that nothing of ``uid`` is left.

    Raises:
        RuntimeError: something of the uid survived (the uid must not be reused).
    """
    kill_uid(uid)
    left = leftovers(uid, queues=clean_uid(uid))
    if left:
        raise RuntimeError(f"sandbox uid {uid} left {left[:10]} behind")


def _unused(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return not leftovers(uid)
    return False


def _claim(uid: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0offline-rl-grading-uid-{uid}")
    except OSError:
        sock.close()
        return None
    return sock


def orphans() -> set[int]:
    """Sandbox uids (FRESH_UIDS) that have live processes but no run holding them: what a grader
    killed before its cleanup (SIGKILL, a crash) left running."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                ids = _ids((entry / "status").read_text(), "Uid:")
                found |= {u for u in ids if u in FRESH_UIDS}
    left = set()
    for uid in found:
        sock = _claim(uid)
        if sock is not None:  # nobody holds it: an orphan
            sock.close()
            left.add(uid)
    return left


def _orphaned_scratch(folder: str) -> Iterator[tuple[str, int]]:
    """Scratch trees (``grading-*``, runner._grade_as) in ``folder`` whose ``work/`` belongs to a
    sandbox uid no run holds: a grader killed outright left them (and maybe a tmpfs on work/)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith("grading-") or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                top = entry.stat(follow_symlinks=False)
                work = os.lstat(os.path.join(entry.path, "work"))
                if top.st_uid == 0 and stat.S_ISDIR(work.st_mode) and work.st_uid in FRESH_UIDS:
                    yield entry.path, work.st_uid


def _held(uid: int) -> bool:
    """Whether a live run holds ``uid`` (its claim socket is taken)."""
    sock = _claim(uid)
    if sock is None:
        return True
    sock.close()
    return False


def _remove_stale_cgroups() -> None:
    """Remove the kernels' memory groups (``grading-<uid>-<hex>``) of uids no run holds: a grader
    killed outright left them. Their processes are ended first (a group with processes cannot
    go), each uid while holding it."""
    from grading.sandbox import remove_cgroup, stale_cgroups  # sandbox imports this module

    for group in stale_cgroups(_held):
        uid = int(group.name.split("-")[1])
        sock = _claim(uid)
        if sock is None:
            continue  # a run took it meanwhile
        try:
            if uid in FRESH_UIDS:
                with contextlib.suppress(RuntimeError):
                    end_uid(uid)
                remove_cgroup(group)
            else:  # a forced uid may be a real user's: never kill, remove the group if empty
                with contextlib.suppress(OSError):
                    group.rmdir()
        finally:
            sock.close()


def sweep(scratch_dir: str | None = None) -> list[int]:
    """End every orphaned sandbox uid (see ``orphans``), each while holding it, and remove the
    scratch trees of dead runs in ``scratch_dir`` (default: the temporary folder); return the
    uids ended."""
    import tempfile

    for path, uid in list(_orphaned_scratch(scratch_dir or tempfile.gettempdir())):
        sock = _claim(uid)
        if sock is None:
            continue  # its run is alive
        try:
            work = os.path.join(path, "work").encode()
            ctypes.CDLL(None, use_errno=True).umount2(work, 2)  # MNT_DETACH; none is fine
            with contextlib.suppress(RuntimeError, OSError):
                remove_tree(path)
        finally:
            sock.close()
    ended = []
    _remove_stale_cgroups()
    for uid in sorted(orphans()):
        sock = _claim(uid)
        if sock is None:
            continue  # a run took it meanwhile
        try:
            with contextlib.suppress(RuntimeError):
                end_uid(uid)
            ended.append(uid)
        finally:
            sock.close()
    return ended


@contextlib.contextmanager
def reserve(uid: int | None = None, wait: float = 1800.0) -> Iterator[int]:
    """Hold a sandbox uid for one run: ``uid`` itself (waiting while another run holds it), or a
    fresh one when ``uid`` is None. On exit every process of the uid is killed.

    First, as root, orphaned sandbox uids (processes with no run holding them: a grader that was
    killed) are ended, so nothing a dead run started keeps running or holds resources."""
    if os.geteuid() == 0:
        sweep()
    sock = None
    if uid is None:
        rng = random.SystemRandom()
        for _ in range(1000):
            candidate = rng.choice(FRESH_UIDS)
            # Claimed first, then checked once: checked before the claim, another run could
            # take, use and release it in between (each check costs ~0.03 CPU-s).
            sock = _claim(candidate)
            if sock is not None:
                if _unused(candidate):
                    uid = candidate
                    break
                sock.close()
        if uid is None:
            raise RuntimeError(f"no free sandbox uid in {FRESH_UIDS}")
    else:
        deadline = time.monotonic() + wait
        while (sock := _claim(uid)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandbox uid {uid} is held by another grading run")
            time.sleep(0.5)
        end_uid(uid)  # a forced uid may carry leftovers of a run that crashed
    assert sock is not None
    try:
        yield uid
    finally:
        try:
            end_uid(uid)
        finally:
            sock.close()  # released only now: never while anything of the uid remains
