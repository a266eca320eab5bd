"""Run untrusted notebook code in a kernel owned by an unprivileged user, one cell at a time.

The grading process (trusted, usually root on Gradescope) owns the run's private folder (launch
configuration, connection file) and every file with expected values; the kernel runs as the run's
own uid (:mod:`grading.uids`) with memory, file-size and process limits, in a minimal view of the
filesystem where the machine allows it, sees only what was copied into its working directory, and
is killed, with every process of its uid, when grading ends. Each cell gets a wall-clock limit:
past it the kernel is interrupted, and if it does not answer the interrupt it is killed and the
caller may restart it. No wait is longer than the run's deadline.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from grading.results import clean
from grading.uids import kill_uid

LAUNCHER = Path(__file__).with_name("launcher.py")

Status = Literal["ok", "error", "timeout", "died"]
#: Folders of the host the jailed kernel sees (besides the Python installation and its workdir).
SYSTEM_DIRS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/dev",
    "/proc",
    "/sys",
)
MAX_MESSAGE_BYTES = 16 * 2**20
#: Tries to start a kernel before the grading fails (see ``Sandbox.start``).
START_ATTEMPTS = 3
WRITABLE = (".tmp", ".mpl", ".ipython", ".jupyter")


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
    cell_timeout: float = 60.0
    """Seconds a single cell may run before it is interrupted."""
    interrupt_grace: float = 5.0
    """Seconds an interrupted cell gets to stop before the kernel is killed."""
    startup_timeout: float = 60.0
    """Seconds the kernel may take to start."""
    output_chars: int = 4_000
    """Characters of a cell's printed output kept for the report; the rest is counted, not kept."""
    jail: Literal["auto", "require", "off"] = "auto"
    """Shut the kernel into a mount namespace that shows only system folders, the Python
    installation and its working directory: "auto" where the machine allows it (root with
    CAP_SYS_ADMIN; Gradescope's container may not), "require" fails the start otherwise."""


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
    }


def jail_binds(workdir: Path, python: str) -> list[str]:
    """What the jailed kernel sees: system folders, the Python installation (a venv and the
    interpreter it links to), its working directory. Nested paths are left to their parent."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(python).parent.parent)}
    wanted = [*SYSTEM_DIRS, *prefixes, *(os.path.realpath(p) for p in prefixes), str(workdir)]
    binds: list[str] = []
    for path in sorted({os.path.normpath(p) for p in wanted if os.path.exists(p)}, key=len):
        if not any(Path(path).is_relative_to(done) for done in binds):
            binds.append(path)
    return binds


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
        cfg = self.config
        launch = {
            "workdir": str(self.workdir),
            "writable": [str(self.workdir / sub) for sub in WRITABLE],
            "uid": self.uid,
            "gid": self.gid,
            "memory_bytes": cfg.memory_bytes,
            "file_bytes": cfg.file_bytes,
            "max_processes": cfg.max_processes,
            "python": self.python,
            "env": kernel_env(self.workdir, self.python),
            "jail_root": None,
        }
        if cfg.jail != "off" and self.uid is not None:
            jail_root = self._private / "root"
            jail_root.mkdir(mode=0o700, exist_ok=True)
            launch |= {
                "jail_root": str(jail_root),
                "jail_binds": jail_binds(self.workdir, self.python),
                "jail_required": cfg.jail == "require",
            }
        launch_file = self._private / "launch.json"
        launch_file.write_text(json.dumps(launch))
        spec_dir = self._private / "kernels" / "sandbox"
        spec_dir.mkdir(parents=True, exist_ok=True)
        # -I -S: the root launcher reads no environment variable and no .pth file of site-packages.
        argv = [sys.executable, "-I", "-S", str(LAUNCHER), str(launch_file), "{connection_file}"]
        spec = {"argv": argv, "display_name": "sandbox", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[str(self._private / "kernels")])
        # A kernel can die before it answers for reasons that pass: the ports jupyter_client
        # picked (free when it looked) taken by another process before the kernel bound them.
        # A few attempts, each with fresh ports, before a student loses the grading to it.
        for attempt in range(1, START_ATTEMPTS + 1):
            self.km = KernelManager(
                kernel_name="sandbox",
                kernel_spec_manager=ksm,
                connection_file=str(self._private / "connection.json"),
            )
            # The root launcher starts in the private folder, never in one the kernel can change.
            self.km.start_kernel(cwd=str(self._private))
            self.kc = self.km.client()
            self.kc.start_channels()
            for channel in (self.kc.iopub_channel, self.kc.shell_channel, self.kc.control_channel):
                # A kernel that floods one huge message is cut off, not allowed to exhaust us.
                with contextlib.suppress(Exception):
                    channel.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            wait = max(0.1, min(cfg.startup_timeout, self.remaining()))
            try:
                self.kc.wait_for_ready(timeout=wait)
                return
            except RuntimeError as err:
                self.stop()
                if attempt < START_ATTEMPTS and self.remaining() > cfg.startup_timeout:
                    print(f"grading: kernel start {attempt} failed ({err}); again", file=sys.stderr)
                    continue
                raise RuntimeError(
                    f"the grading kernel did not start ({attempt} attempts): {err}. If the grader "
                    f"runs as root, check that uid {cfg.uid} can read and execute {self.python} "
                    "(e.g. `chmod o+x /root` when Python lives under /root)."
                ) from err

    def alive(self) -> bool:
        return self.km is not None and self.km.is_alive()

    def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km is not None:
            with contextlib.suppress(Exception):  # already dead: nothing to shut down
                self.km.shutdown_kernel(now=True)
            self.km = None
        if self.uid is not None:
            kill_uid(self.uid, self.gid)

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
                self.km.interrupt_kernel()
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
                if not self.km.is_alive():
                    run.status = "died" if run.status == "ok" else run.status
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
