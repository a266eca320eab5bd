"""Run untrusted notebook code in a kernel owned by an unprivileged user, one cell at a time.

The grading process (trusted, usually root) owns the run's private folder (launch configuration,
connection file) and every file with expected values. The kernel runs as the run's own uid
(:mod:`grading.uids`) with memory, file-size and process limits. Where the machine allows it
(root with namespaces: this machine, CI, an instructor's Linux box) it runs inside bubblewrap
(``bwrap``): its own PID, IPC, network, mount and UTS namespaces, a fresh ``/proc``, and a view of
the filesystem that holds only the read-only Python installation, the system libraries and its
working directory. Elsewhere (the *floor*: Gradescope's container may refuse namespaces) it runs
as its uid only, and root ends every process and IPC object of that uid itself (grading.uids).

The kernel talks to the grader over ZMQ's ``ipc`` transport (Unix sockets in its working
directory): it needs no network and no ports. Each cell gets a wall-clock limit: past it the
kernel is interrupted, and if it does not answer the interrupt it is killed and the caller may
restart it. No wait is longer than the run's deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import queue
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Literal

import zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_core.utils import run_sync

from grading import uids
from grading.results import clean

LAUNCHER = Path(__file__).with_name("launcher.py")
#: The one provisioner the grader starts kernels with: jupyter_client's own LocalProvisioner, what
#: its default name "local-provisioner" means. jupyter_client looks provisioners up by reading
#: the entry points of every installed distribution (~0.04 CPU-s of every grading, before the
#: first kernel starts); named here, that scan never runs, and no installed package can put
#: another provisioner in its place.
LOCAL_PROVISIONER = EntryPoint(
    name="local-provisioner",
    value="jupyter_client.provisioning:LocalProvisioner",
    group="jupyter_client.kernel_provisioners",
)
KernelProvisionerFactory._get_all_provisioners = staticmethod(  # type: ignore[method-assign]
    lambda: [LOCAL_PROVISIONER]
)

Status = Literal["ok", "error", "timeout", "died"]
Isolation = Literal["auto", "require", "floor"]
#: System folders the namespaced kernel sees read-only (a symlink, e.g. /lib -> usr/lib on merged-
#: /usr systems, is recreated as the same symlink).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Single files (or small folders) of /etc that libraries read; nothing else of /etc is shown.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/fonts", "/etc/mime.types")
#: Size of each tmpfs inside the namespace (/tmp, /dev/shm): memory outside RLIMIT_DATA, capped.
TMPFS_BYTES = 64 * 2**20
MAX_MESSAGE_BYTES = 16 * 2**20
#: Longest path a Unix socket may have (sun_path is 108 bytes, one for the final NUL).
MAX_SOCKET_PATH = 107
#: Seconds a kernel whose iopub connection dropped may take to end: if it lives on, the drop was
#: a message over MAX_MESSAGE_BYTES, not its death.
IOPUB_DEATH_GRACE = 2.0
#: Tries to start a kernel before the grading fails (see ``Sandbox.start``).
START_ATTEMPTS = 3
WRITABLE = (".tmp", ".mpl", ".ipython", ".jupyter")
#: Gradescope's autograder folder: where it exists, "auto" may fall back to the floor.
GRADESCOPE_SOURCE = Path("/autograder/source")
#: Where bubblewrap is looked for (an absolute path: PATH is not trusted to choose the sandbox).
BWRAP_PATHS = ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap")


class KernelStartError(RuntimeError):
    """The kernel could not be started: the grader's problem, never the student's score."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and identity of the student kernel."""

    uid: int | Literal["fresh"] | None = "fresh"
    """User id the kernel runs as: ``"fresh"`` picks an unused one per run (grading.uids), an int
    forces one (runs sharing it wait for each other), ``None`` keeps the grader's own user
    (trusted code only)."""
    gid: int | None = None
    """Group id the kernel runs as (default: the same number as the uid)."""
    memory_bytes: int = 640 * 2**20
    """RLIMIT_DATA of the kernel (private writable memory). The solution needs ~390 MB; 640 MB
    keeps kernel + grader under Gradescope's 768 MB, so a blow-up is a MemoryError in the
    student's cell, not a killed container (benchmarks/grading_resources.py measures it)."""
    file_bytes: int = 64 * 2**20
    """Largest file the kernel may write."""
    max_processes: int = 256
    """RLIMIT_NPROC for the sandbox uid (threads count): stops fork bombs."""
    open_files: int = 1024
    """RLIMIT_NOFILE per kernel process. Set, never inherited (a grader may run with 10^6): the
    machine's file table is shared by every grading, and each open file costs kernel memory."""
    cell_timeout: float = 60.0
    """Seconds a single cell may run before it is interrupted."""
    interrupt_grace: float = 5.0
    """Seconds an interrupted cell gets to stop before the kernel is killed."""
    startup_timeout: float = 60.0
    """Seconds the kernel may take to start."""
    output_chars: int = 4_000
    """Characters of a cell's printed output kept for the report; the rest is counted, not kept."""
    workdir_bytes: int = 256 * 2**20
    """Size of the kernel's working folder, its own tmpfs where the machine allows it (namespaces):
    the kernel can fill neither the disk nor the RAM past it (its files need ~1 MB)."""
    workdir_inodes: int = 32_768
    """Files and folders the working folder's tmpfs may hold."""
    cgroup_memory_bytes: int = 700 * 2**20
    """Memory of the kernel and every process it starts together (a cgroup v1 memory controller,
    where /sys/fs/cgroup/memory is writable): RLIMIT_DATA caps one process only, and forked
    children would each get their own. 0 turns it off."""
    cgroup_cpu_cores: float = 1.0
    """CPU the kernel and every process it starts may use together, in cores (a cgroup v1 cpu
    controller's CFS quota, where /sys/fs/cgroup/cpu is writable). Batch grading runs several
    gradings on one machine, and all their waits are wall-clock: without it one student's
    processes could take the CPU another student's cells need and make them time out. One core
    is twice what Gradescope gives a whole submission (0.5 CPU). 0 turns it off."""
    isolation: Isolation = "auto"
    """Namespaces around the kernel (bubblewrap): "auto" uses them where the machine allows it and
    falls back to the floor (uid separation only) elsewhere; "require" refuses to grade without
    them; "floor" never uses them (tests of the floor, Gradescope without bwrap)."""


@dataclass
class CellRun:
    """What happened when one cell ran."""

    status: Status
    seconds: float
    ename: str = ""
    evalue: str = ""
    traceback: list[str] = field(default_factory=list)
    stdout: str = ""
    output_chars: int = 0
    flooded: bool = False
    """The kernel sent one message over MAX_MESSAGE_BYTES: the grader's connection dropped it, so
    the kernel was stopped (nothing more of it could arrive)."""
    machine_oom: bool = False
    """The kernel died while its own memory cap was never reached but a group the grader runs in
    hit its limit: the machine ran out of memory, not the notebook (see Sandbox.machine_oom)."""


def kernel_env(workdir: Path, python: str) -> dict[str, str]:
    """A small, explicit environment: nothing of the grader's leaks into the kernel."""
    bindir = str(Path(python).parent)
    return {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "USER": "student",
        "LOGNAME": "student",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(workdir),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": str(workdir / ".tmp"),
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(workdir / ".mpl"),
        "IPYTHONDIR": str(workdir / ".ipython"),
        "JUPYTER_CONFIG_DIR": str(workdir / ".jupyter"),
        "JUPYTER_DATA_DIR": str(workdir / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(workdir / ".jupyter"),
        # One thread everywhere: Gradescope gives half a CPU, and results must not depend on it.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        # torch scans every distribution's entry points for device backends at import (~0.04
        # CPU-s, with importlib.metadata); a graded kernel runs on the CPU backend only.
        "TORCH_DEVICE_BACKEND_AUTOLOAD": "0",
    }


def python_dirs(python: str) -> list[str]:
    """The Python installation the kernel needs (a venv and the interpreter it links to), as
    real paths, nested ones left to their parent."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(python).parent.parent)}
    wanted = {os.path.normpath(p) for p in prefixes} | {os.path.realpath(p) for p in prefixes}
    dirs: list[str] = []
    for path in sorted((p for p in wanted if os.path.isdir(p)), key=len):
        if not any(Path(path).is_relative_to(done) for done in dirs):
            dirs.append(path)
    return dirs


def bwrap_path() -> str | None:
    """bubblewrap's absolute path, or None when it is not installed."""
    return next((p for p in BWRAP_PATHS if os.access(p, os.X_OK)), None)


#: bwrap's namespaces. No user namespace: the uids inside are the host's, so the kernel's files
#: belong to the run's uid everywhere and the launcher's drop to it is a real one.
NAMESPACES = (
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
)


def bwrap_argv(workdir: Path, launch_dir: Path, python: str) -> list[str]:
    """bubblewrap's command line up to ``--``: what the kernel sees and which namespaces it gets.

    The launcher starts inside as root with only CAP_SETUID/CAP_SETGID left, and drops to the
    run's uid before any student code runs. ``--die-with-parent``: when the grader (or bwrap)
    dies, the namespace's init dies, and with it every process of the namespace.
    """
    bwrap = bwrap_path()
    if bwrap is None:
        raise KernelStartError("bubblewrap (bwrap) is not installed")
    argv = [bwrap, *NAMESPACES, "--die-with-parent", "--new-session", "--clearenv"]
    argv += ["--hostname", "grading", "--cap-drop", "ALL"]
    argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    # Sticky and world-writable, as on the host (bwrap makes a tmpfs 0755 otherwise).
    argv += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/dev/shm"]
    argv += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    binds = [("--ro-bind-try", p) for p in SYSTEM_FILES]
    binds += [("--ro-bind", p) for p in python_dirs(python)]
    # Both at their host paths (they may lie under /tmp: after its tmpfs), so every path in the
    # launch files and the connection file means the same inside.
    binds += [("--ro-bind", str(launch_dir)), ("--bind", str(workdir))]
    # Their parents, created traverse-only (bwrap would make them with the caller's umask,
    # 0700 under root's, closed to the kernel's uid); none of them lists anything of the host.
    parents = {str(q) for _, p in binds for q in Path(p).parents if str(q) not in ("/", "/tmp")}
    for parent in sorted(parents, key=lambda q: (q.count("/"), q)):
        argv += ["--perms", "0711", "--dir", parent]
    for option, path in binds:
        argv += [option, path, path]
    # Root without CAP_DAC_OVERRIDE cannot enter the kernel's 0700 workdir: start where the
    # launcher lies; it enters the workdir after dropping to the uid.
    argv += ["--chdir", str(launch_dir)]
    return argv


@functools.cache
def namespaces_work() -> str | None:
    """None when bubblewrap can build the sandbox here, else why not (checked once per process:
    Gradescope's container may refuse namespaces; then the floor is used)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() != 0:
        return "the grader is not root"
    # The real command line (so an option this bwrap lacks shows here), around a folder that
    # exists anyway: nothing is created that a killed grader could leave behind.
    here = LAUNCHER.parent
    try:
        proc = subprocess.run(
            [*bwrap_argv(here, here, sys.executable), "--", sys.executable, "-I", "-S", "-c", ""],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env={},
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"bwrap failed: {err}"
    if proc.returncode != 0:
        return f"bwrap refused ({proc.stderr.strip()[:300]})"
    return None


def use_namespaces(config: SandboxConfig) -> bool:
    """Whether this run's kernel goes into namespaces (raises if required but impossible)."""
    if config.uid is None or config.isolation == "floor":
        return False
    why_not = namespaces_work()
    if why_not is None:
        return True
    if config.isolation == "require":
        raise KernelStartError(f"--sandbox require: no namespaces here: {why_not}")
    if not GRADESCOPE_SOURCE.is_dir():
        # Off Gradescope the floor lets a notebook read every world-readable file of the machine
        # (a solution in a checkout): only an explicit "floor" accepts that (README, item 16).
        raise KernelStartError(
            f"no namespaces here ({why_not}), and the floor sandbox is used only on Gradescope "
            "or with --sandbox floor (isolation='floor')"
        )
    print(f"grading: no namespaces ({why_not}); the floor sandbox is used", file=sys.stderr)
    return False


#: Where cgroup v1's memory and cpu controllers live (the kernel's processes get one group of
#: each per start).
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
#: Runs before bwrap (or the launcher) to put it, and so everything it starts, into its cgroups:
#: ``python -I -S -c ENTER_CGROUP PROCS[:PROCS...] PROGRAM ARG...`` (the same pid then execs).
ENTER_CGROUP = (
    "import os, sys\n"
    "for procs in sys.argv[1].split(os.pathsep):\n"
    "    with open(procs, 'w') as f: f.write(str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
#: The CFS period of the kernel's cpu group (cgroup v1's default, 100 ms).
CPU_PERIOD_US = 100_000
MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_workdir(workdir: Path, config: SandboxConfig) -> None:
    """Mount a tmpfs of its own on the (empty) working folder: ``workdir_bytes`` and
    ``workdir_inodes`` at most, mode 0700, no devices, no setuid. Needs root with CAP_SYS_ADMIN
    (where namespaces work). Raises OSError when the mount fails."""
    options = f"size={config.workdir_bytes},nr_inodes={config.workdir_inodes},mode=0700"
    if _libc().mount(
        b"grading", str(workdir).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {workdir}: {os.strerror(err)}")


def unmount_workdir(workdir: Path) -> None:
    """Detach the working folder's tmpfs (its files go with it), whatever still uses it."""
    if _libc().umount2(str(workdir).encode(), MNT_DETACH):
        err = ctypes.get_errno()
        raise OSError(err, f"umount {workdir}: {os.strerror(err)}")


def _own_cgroup(hierarchy: Path = CGROUP_MEMORY) -> Path:
    """The cgroup v1 group this process runs in under ``hierarchy``, a controller's folder in
    /sys/fs/cgroup (the hierarchy's root if unknown)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if hierarchy.name in controllers.split(","):
                group = hierarchy / path.lstrip("/")
                return group if group.is_dir() else hierarchy
    except (OSError, ValueError):
        pass
    return hierarchy


def _new_cgroup(hierarchy: Path, name: str) -> Path | None:
    """A fresh group ``name`` inside the grader's own group of ``hierarchy`` where it can be
    made (a group is bound by its parents' limits too, so the kernel never leaves a limit the
    grader runs under: a container's, or Gradescope's size emulated by
    benchmarks/grading_resources.py), at the top level otherwise; None where neither works."""
    for parent in dict.fromkeys((_own_cgroup(hierarchy), hierarchy)):
        group = parent / name
        try:
            group.mkdir(mode=0o700)
            return group
        except OSError:
            continue
    return None


#: Memory the grader keeps beside the kernel where a group it runs in is limited: the grader
#: process itself (~130 MB: Python, numpy, jupyter_client) and one harvested output inflated
#: and copied (2 x 64 MB, runner.MAX_OUTPUT_BYTES). The kernel's cap leaves this free.
GRADER_RESERVE_BYTES = 128 * 2**20 + 2 * 64 * 2**20
#: The kernel's cap never goes below this, however small the grader's group (it then says so).
MIN_KERNEL_BYTES = 128 * 2**20
#: A cgroup v1 limit at or above this is "no limit" (the kernel writes 2**63 rounded to pages).
UNLIMITED = 2**60
#: The grader's own /proc/self/oom_score_adj (root only may lower it): when a group it shares with
#: the kernel runs out of memory, the OOM killer picks the kernel (+1000, set by the launcher),
#: never the grader, which then writes the report.
GRADER_OOM_SCORE_ADJ = -900
#: The kernel's, set by the launcher before it drops privileges (the kernel cannot lower it).
KERNEL_OOM_SCORE_ADJ = 1000


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _ancestors(group: Path) -> list[Path]:
    """``group`` and each group above it up to the memory hierarchy's root, nearest first."""
    chain = [group]
    while chain[-1] != CGROUP_MEMORY and CGROUP_MEMORY in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def group_memory_limit(group: Path) -> int | None:
    """The smallest memory limit (bytes) on ``group`` and every group above it (cgroup v1), or
    None when none is limited or nothing can be read."""
    limits = [_read_int(g / "memory.limit_in_bytes") for g in _ancestors(group)]
    known = [n for n in limits if n is not None and n < UNLIMITED]
    return min(known) if known else None


def kernel_memory_cap(config: SandboxConfig, parent: Path) -> int:
    """The kernel group's cap: ``cgroup_memory_bytes``, lowered so that kernel and grader
    (GRADER_RESERVE_BYTES) fit together under the limit of the grader's own group ``parent``
    where one is set (Gradescope's 768 MB container: 512 MB for the kernel)."""
    limit = group_memory_limit(parent)
    if limit is None:
        return config.cgroup_memory_bytes
    cap = min(config.cgroup_memory_bytes, limit - GRADER_RESERVE_BYTES)
    if cap < MIN_KERNEL_BYTES:
        print(
            f"grading: the grader's memory group allows {limit / 2**20:.0f} MB, too little for "
            f"kernel and grader; the kernel gets {MIN_KERNEL_BYTES / 2**20:.0f} MB",
            file=sys.stderr,
        )
        cap = MIN_KERNEL_BYTES
    return cap


def protect_grader() -> None:
    """As root, make the grader the OOM killer's last choice (GRADER_OOM_SCORE_ADJ): a kernel
    filling a group both share is killed instead, and the grader reports it."""
    if os.geteuid() == 0:
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(GRADER_OOM_SCORE_ADJ))


#: A kernel group whose peak usage stayed this far below its cap never reached the cap.
OWN_CAP_MARGIN = 4 * 2**20


def killed_below_own_cap(group: Path) -> bool:
    """Whether the OOM killer killed a process of the kernel's ``group`` (memory.oom_control's
    ``oom_kill``) while the group's peak usage (memory and memory+swap) stayed below its own cap:
    the OOM came from a group above it (the grader's, the machine's), not from the kernel's own
    limit. False where the counters cannot be read. (memory.failcnt is not used: recent Linux
    kernels no longer count it for v1 groups.)"""
    limit = _read_int(group / "memory.limit_in_bytes")
    try:
        control = (group / "memory.oom_control").read_text().split()
        kills = int(control[control.index("oom_kill") + 1])
    except (OSError, ValueError, IndexError):
        return False
    peaks = [_read_int(group / f) for f in ("memory.max_usage_in_bytes",
                                             "memory.memsw.max_usage_in_bytes")]  # fmt: skip
    peak = max((n for n in peaks if n is not None), default=None)
    if limit is None or peak is None:
        return False
    return kills > 0 and peak < limit - OWN_CAP_MARGIN


def stale_cgroups(held: Callable[[int], bool]) -> list[Path]:
    """``grading-<uid>-<hex>`` memory and cpu groups (in the grader's group and at the top) of
    uids for which ``held(uid)`` is False: a grader killed outright left them."""
    found = []
    parents = [p for h in (CGROUP_MEMORY, CGROUP_CPU) for p in (_own_cgroup(h), h)]
    for parent in dict.fromkeys(parents):
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                parts = entry.name.split("-")
                ours = len(parts) == 3 and parts[0] == "grading" and parts[1].isdigit()
                if ours and entry.is_dir() and not held(int(parts[1])):
                    found.append(entry)
    return found


def memory_cgroup(name: str, config: SandboxConfig) -> Path | None:
    """A fresh cgroup v1 memory group ``name`` capped at ``cgroup_memory_bytes`` (swap included
    where memory.memsw exists), or None where it cannot be made (no v1 memory controller, not
    root, or turned off); then RLIMIT_DATA per process is all the cap there is."""
    if config.cgroup_memory_bytes <= 0 or os.geteuid() != 0 or not CGROUP_MEMORY.is_dir():
        return None
    group = _new_cgroup(CGROUP_MEMORY, name)
    if group is None:
        return None
    cap = kernel_memory_cap(config, group.parent)
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap))
        memsw = group / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(cap))
    except OSError:
        remove_cgroup(group)
        return None
    return group


def cpu_cgroup(name: str, config: SandboxConfig) -> Path | None:
    """A fresh cgroup v1 cpu group ``name`` whose processes together get at most
    ``cgroup_cpu_cores`` cores (CFS quota), or None where it cannot be made (no v1 cpu
    controller, not root, or turned off): the kernel then competes for the CPU process by
    process. Being a group of its own also gives it one share of the CPU beside other gradings'
    kernels, however many processes it starts."""
    if config.cgroup_cpu_cores <= 0 or os.geteuid() != 0 or not CGROUP_CPU.is_dir():
        return None
    group = _new_cgroup(CGROUP_CPU, name)
    if group is None:
        return None
    try:
        (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        quota = max(1_000, round(config.cgroup_cpu_cores * CPU_PERIOD_US))  # the kernel's minimum
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    except OSError:
        remove_cgroup(group)
        return None
    return group


def remove_cgroup(group: Path) -> None:
    """Remove a cgroup once nothing of it runs (a process left in it keeps it: retried a
    few times, then left, and reported)."""
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    print(f"grading: could not remove cgroup {group}", file=sys.stderr)


class Sandbox:
    """A kernel in ``workdir`` running as the sandbox user; use as a context manager.

    ``private`` is a root-only folder for the launch configuration and the connection file (a
    fresh temporary folder when not given, removed on exit); ``deadline`` (a ``time.monotonic``
    value) caps every wait, the kernel's start included.
    """

    def __init__(
        self,
        workdir: Path,
        config: SandboxConfig,
        python: str = sys.executable,
        private: Path | None = None,
        deadline: float = math.inf,
    ) -> None:
        if config.uid == "fresh":
            raise ValueError("reserve a uid first (grading.uids.reserve)")
        self.workdir, self.config, self.python = Path(workdir), config, python
        self.deadline = deadline
        self._own_private = private is None
        self._private = (
            Path(tempfile.mkdtemp(prefix="grading-kernel-")) if private is None else private
        )
        self.km: KernelManager | None = None
        self.kc = None
        self._starts = 0
        self._context: zmq.Context | None = None
        self._iopub_events: zmq.Socket | None = None
        self._cgroup: Path | None = None
        self._cpu_group: Path | None = None
        self.namespaced = False
        """Whether the current kernel runs inside namespaces (bubblewrap)."""

    @property
    def uid(self) -> int | None:
        return self.config.uid if isinstance(self.config.uid, int) else None

    @property
    def gid(self) -> int | None:
        return self.config.gid if self.config.gid is not None else self.uid

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.__exit__()  # a kernel that fails to start leaves nothing behind either
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._own_private:
                shutil.rmtree(self._private, ignore_errors=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> None:
        """Start a kernel, trying again with fresh sockets when a start fails in any way.

        Raises:
            KernelStartError: no kernel after START_ATTEMPTS (the grader's problem).
        """
        cfg = self.config
        namespaced = use_namespaces(cfg)
        self.namespaced = namespaced
        error: BaseException | None = None
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once(namespaced)
                return
            except Exception as err:  # OSError (EADDRINUSE), zmq errors, a kernel that died...
                error = err
                self.stop()
                if attempt < START_ATTEMPTS and self.remaining() > cfg.startup_timeout:
                    print(f"grading: kernel start {attempt} failed ({err}); again", file=sys.stderr)
                    continue
                break
        raise KernelStartError(
            f"the grading kernel did not start: {error}. If the grader runs as root, check that "
            f"uid {cfg.uid} can read and execute {self.python} (e.g. `chmod o+x /root` when "
            "Python lives under /root)."
        ) from error

    def _start_once(self, namespaced: bool) -> None:
        cfg = self.config
        self._starts += 1
        # Fresh launch files and fresh socket names for every start: nothing of a failed start
        # (a socket path a dead kernel left, a port another process took) is ever reused.
        launch_dir = self._private / f"launch-{self._starts}"
        launch_dir.mkdir(mode=0o700)
        launch = {
            "workdir": str(self.workdir),
            "writable": [str(self.workdir / sub) for sub in WRITABLE],
            "uid": self.uid,
            "gid": self.gid,
            "memory_bytes": cfg.memory_bytes,
            "file_bytes": cfg.file_bytes,
            "max_processes": cfg.max_processes,
            "open_files": cfg.open_files,
            "oom_score_adj": KERNEL_OOM_SCORE_ADJ if self.uid is not None else None,
            "python": self.python,
            "env": kernel_env(self.workdir, self.python),
        }
        launch_file = launch_dir / "launch.json"
        launch_file.write_text(json.dumps(launch))
        launcher = launch_dir / "launcher.py"
        shutil.copyfile(LAUNCHER, launcher)
        # -I -S: the root launcher reads no environment variable and no .pth file of site-packages.
        argv = [sys.executable, "-I", "-S", str(launcher), str(launch_file), "{connection_file}"]
        if namespaced:
            argv = [*bwrap_argv(self.workdir, launch_dir, self.python), "--", *argv]
        protect_grader()
        name = f"grading-{self.uid}-{secrets.token_hex(6)}"
        self._cgroup = memory_cgroup(name, cfg)
        self._cpu_group = cpu_cgroup(name, cfg)
        groups = [g for g in (self._cgroup, self._cpu_group) if g is not None]
        if groups:
            # Entered before bwrap (or the launcher) runs: every process it starts is in them.
            procs = os.pathsep.join(str(g / "cgroup.procs") for g in groups)
            argv = [sys.executable, "-I", "-S", "-c", ENTER_CGROUP, procs, *argv]
        spec_dir = launch_dir / "kernels" / "sandbox"
        spec_dir.mkdir(parents=True)
        # "message": ipykernel interrupts itself on a control message. A signal would reach bwrap
        # (the process jupyter_client started), not the kernel inside the namespace.
        spec = {
            "argv": argv,
            "display_name": "sandbox",
            "language": "python",
            "interrupt_mode": "message" if namespaced else "signal",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[str(launch_dir / "kernels")])
        # Never reconnect: a socket path lies in the kernel's folder, where it could be swapped for
        # a link to another socket of the machine once we are connected. We connect once, after
        # checking that each path is a socket of the kernel's uid (_wait_for_sockets).
        prefix = self.workdir / f".kernel-{secrets.token_hex(8)}"
        if len(str(prefix)) + 3 > MAX_SOCKET_PATH:  # "-N" is appended for each of the 5 sockets
            raise KernelStartError(
                f"the kernel's socket paths under {self.workdir} would be longer than Unix sockets "
                f"allow ({MAX_SOCKET_PATH} bytes): set TMPDIR to a shorter folder"
            )
        self._context = zmq.Context()
        self._context.setsockopt(zmq.RECONNECT_IVL, -1)
        # A kernel that floods one huge message is cut off, not allowed to exhaust us. A context
        # option, so every socket has it before it connects (set on a connected socket, libzmq
        # never applies it to that connection).
        self._context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.km = KernelManager(
            kernel_name="sandbox",
            kernel_spec_manager=ksm,
            connection_file=str(launch_dir / "connection.json"),
            transport="ipc",
            # Unix sockets in the kernel's working directory (its own, 0700): no ports to pick or
            # to lose, no network needed. Each start has its own unguessable names, so nothing a
            # former kernel of the run planted there can be at them.
            ip=str(prefix),
            context=self._context,
        )
        # The root launcher starts in the private folder, never in one the kernel can change.
        self.km.start_kernel(cwd=str(launch_dir))
        self._wait_for_sockets(min(cfg.startup_timeout, max(0.1, self.remaining())))
        self.kc = self.km.client(context=self._context)
        # No heartbeat: jupyter_client's heartbeat channel reconnects *by path* (a fresh socket)
        # after a missed beat, and the path lies in the kernel's folder, where the kernel can
        # put a link to any socket of the host. Whether the kernel lives is known from its
        # process (km.is_alive), not from beats.
        # Nor stdin: the grader never reads it (cells run with allow_stdin=False), and a kernel
        # could fill an unread socket's queue inside the grader (red team rt10).
        self.kc.start_channels(hb=False, stdin=False)
        # A message over MAX_MESSAGE_BYTES makes libzmq drop the iopub connection, after which no
        # output, error or idle status can arrive: watch for that instead of waiting a timeout.
        self._iopub_events = self.kc.iopub_channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._wait_for_ready(max(0.1, min(cfg.startup_timeout, self.remaining())))

    def _wait_for_ready(self, timeout: float) -> None:
        """jupyter_client's ``wait_for_ready`` without its last step, which drains iopub until
        nothing arrives for 0.2 s (0.2 s of wall time per kernel start, the kernel idle): a
        kernel_info reply on shell, then any message on iopub (so the subscription is live and
        no output of the first cell is lost), else ask again. Messages left on iopub do not
        matter: ``run`` reads only those of its own request.

        Raises:
            RuntimeError: the kernel died, or did not answer within ``timeout`` seconds.
        """
        assert self.kc is not None and self.km is not None
        end = time.monotonic() + timeout
        while True:
            self.kc.kernel_info()
            try:
                msg = self.kc.get_shell_msg(timeout=1)
            except queue.Empty:
                msg = None
            if isinstance(msg, dict) and msg.get("msg_type") == "kernel_info_reply":
                try:
                    self.kc.get_iopub_msg(timeout=0.2)
                except queue.Empty:
                    pass  # iopub not connected yet: ask again
                else:
                    with contextlib.suppress(Exception):  # its protocol version, as jupyter_client
                        self.kc._handle_kernel_info_reply(msg)
                    return
            if not self.km.is_alive():
                raise RuntimeError("the kernel died before replying to kernel_info")
            if time.monotonic() > end:
                raise RuntimeError(f"the kernel did not reply within {timeout:.0f} s")

    def _wait_for_sockets(self, timeout: float) -> None:
        """Wait until the kernel has bound its five sockets: each a socket (not a link) of the
        kernel's uid. Raises RuntimeError if the kernel dies or ``timeout`` passes first."""
        assert self.km is not None
        info = self.km.get_connection_info()
        ports = [info[f"{name}_port"] for name in ("shell", "iopub", "stdin", "control", "hb")]
        paths = [f"{info['ip']}-{port}" for port in ports]
        owner = self.uid if self.uid is not None else os.geteuid()
        end = time.monotonic() + timeout
        while True:
            ready = 0
            for path in paths:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner:
                    raise RuntimeError(f"{path} is not the kernel's socket")
                ready += 1
            if ready == len(paths):
                return
            if not self.km.is_alive():
                raise RuntimeError("the kernel died before it opened its sockets")
            if time.monotonic() > end:
                raise RuntimeError(f"the kernel opened no sockets within {timeout:.0f} s")
            time.sleep(0.02)

    def _interrupt(self) -> None:
        """SIGINT to the kernel (floor), or ipykernel's interrupt_request on the control channel
        we are connected on (namespaces: a signal would reach bwrap, not the kernel; and a
        second connection with our session's identity would be refused by the kernel's ROUTER)."""
        assert self.km is not None and self.kc is not None
        if self.namespaced:
            self.kc.control_channel.send(self.kc.session.msg("interrupt_request", content={}))
        else:
            self.km.interrupt_kernel()

    def machine_oom(self) -> bool:
        """Whether the kernel was killed for memory its own cap still allowed (the OOM of a group
        above it: the grader's, the machine's). Read before the group is removed (stop)."""
        return self._cgroup is not None and killed_below_own_cap(self._cgroup)

    def alive(self) -> bool:
        return self.km is not None and self.km.is_alive()

    def stop(self) -> None:
        """Kill the kernel and everything it started, then check that nothing of it is left.

        Namespaced, killing bwrap ends the namespace's init and so every process in it; in the
        floor root freezes and kills every process of the uid itself (grading.uids.kill_uid).
        Either way nothing runs as the sandbox uid outside the sandbox, ever.
        """
        if self.kc is not None:
            with contextlib.suppress(Exception):
                self.kc.stop_channels()
            self.kc = None
        if self.km is not None:
            self._kill_and_reap()
            with contextlib.suppress(Exception):  # already dead: nothing to shut down
                self.km.shutdown_kernel(now=True)
            self.km = None
        self._iopub_events = None  # closed with the context
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None
        if self.uid is not None:
            uids.kill_uid(self.uid)
        for group in (self._cgroup, self._cpu_group):
            if group is not None:
                remove_cgroup(group)
        self._cgroup = self._cpu_group = None

    def _kill_and_reap(self) -> None:
        """SIGKILL the kernel's process group as jupyter_client's ``shutdown_kernel(now=True)``
        does (while the process is unreaped, so its group id cannot have been reused), reap it
        with a blocking wait, and let jupyter_client forget it. ``shutdown_kernel`` then finds no
        process: it neither polls every 0.1 s for the process to end (a tenth of a second of
        every grading and restart: wall time at Gradescope's 0.5 CPU) nor first interrupts the
        kernel through a fresh connection to the control socket in the kernel's folder. A
        process that outlives the wait is left to ``shutdown_kernel`` as before."""
        provisioner = self.km.provisioner if self.km is not None else None
        process = getattr(provisioner, "process", None)
        if provisioner is None or process is None:
            return
        with contextlib.suppress(Exception):
            run_sync(provisioner.kill)()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
        if process.returncode is not None:  # dead and reaped: its wait() returns at once
            with contextlib.suppress(Exception):
                run_sync(provisioner.wait)()  # closes its pipes, forgets the process

    def _dies_within(self, seconds: float) -> bool:
        """Whether the kernel process ends within ``seconds`` (a dying kernel drops its
        connections a moment before its process is gone)."""
        assert self.km is not None
        end = time.monotonic() + seconds
        while self.km.is_alive():
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def restart(self) -> None:
        self.stop()
        self.start()

    # ---------------------------------------------------------------- execution
    def run(self, code: str, timeout: float | None = None) -> CellRun:
        """Execute ``code``; never raises for anything the code does."""
        assert self.kc is not None and self.km is not None
        limit = self.config.cell_timeout if timeout is None else timeout
        limit = max(0.0, min(limit, self.remaining() - self.config.interrupt_grace))
        start = time.monotonic()
        run = CellRun(status="ok", seconds=0.0)
        kept: list[str] = []
        msg_id = self.kc.execute(code, allow_stdin=False, store_history=True)
        deadline = start + limit
        interrupted_at: float | None = None
        while True:
            now = time.monotonic()
            if interrupted_at is None and now > deadline:
                run.status = "timeout"
                self._interrupt()
                interrupted_at = now
            if interrupted_at is not None and now > interrupted_at + self.config.interrupt_grace:
                # The cell swallowed KeyboardInterrupt (or is stuck in C code): kill it.
                run.status = "timeout"
                self.stop()
                break
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
                if not isinstance(msg, dict) or not isinstance(msg.get("content"), dict):
                    continue
            except Exception as err:  # queue.Empty, or a message the kernel forged badly
                if not isinstance(err, queue.Empty):
                    continue
                if (
                    self._iopub_events is not None
                    and self._iopub_events.poll(0)
                    and not self._dies_within(IOPUB_DEATH_GRACE)
                ):  # dropped while the kernel lives on: a message over the cap
                    run.status, run.flooded = "died", True
                    self.stop()
                    break
                if not self.km.is_alive():
                    run.status = "died" if run.status == "ok" else run.status
                    run.machine_oom = run.status == "died" and self.machine_oom()
                    break
                continue
            parent = msg.get("parent_header")
            if not isinstance(parent, dict) or parent.get("msg_id") != msg_id:
                continue
            kind, content = msg.get("msg_type"), msg["content"]
            if kind == "stream":
                text = str(content.get("text", ""))
                run.output_chars += len(text)
                if sum(map(len, kept)) < self.config.output_chars:
                    kept.append(text)
            elif kind == "error":
                if run.status == "ok":
                    run.status = "error"
                # Everything the kernel says is untrusted text: no surrogates, no control
                # characters, bounded length (grading.results.clean).
                run.ename = clean(content.get("ename", ""), 200)
                run.evalue = clean(content.get("evalue", ""), 2_000)
                run.traceback = [clean(t, 2_000) for t in list(content.get("traceback", []))[:50]]
            elif kind in ("execute_result", "display_data"):
                data = content.get("data")
                run.output_chars += (
                    len(str(data.get("text/plain", ""))) if isinstance(data, dict) else 0
                )
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        run.stdout = clean("".join(kept), self.config.output_chars)
        run.seconds = time.monotonic() - start
        return run
