"""Run untrusted notebook code in a kernel owned by an unprivileged user, one cell at a time.

The grading process (trusted, usually root on Gradescope) owns the sandbox directory's parent and
every file with expected values; the kernel runs as ``SandboxConfig.uid`` with memory, file-size
and process limits, sees only what was copied into its working directory, and is killed, with
every process of its uid, when grading ends. Each cell gets a wall-clock limit: past it the kernel
is interrupted, and if it does not answer the interrupt it is killed and the caller may restart it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

LAUNCHER = Path(__file__).with_name("launcher.py")

Status = Literal["ok", "error", "timeout", "died"]


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and identity of the student kernel."""

    uid: int | None = 61_234
    """User id the kernel runs as; ``None`` keeps the grader's own user (trusted code only)."""
    gid: int | None = 61_234
    """Group id the kernel runs as (ignored when ``uid`` is None)."""
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


def _uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            if entry.stat().st_uid == uid and not zombie:
                pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (the student's leftovers: children, daemons, forks)."""
    for _ in range(5):
        pids = _uid_processes(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


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


class Sandbox:
    """A kernel in ``workdir`` running as the sandbox user; use as a context manager."""

    def __init__(self, workdir: Path, config: SandboxConfig, python: str = sys.executable) -> None:
        self.workdir, self.config, self.python = Path(workdir), config, python
        self._private = Path(tempfile.mkdtemp(prefix="grading-kernel-"))
        self.km: KernelManager | None = None
        self.kc = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._private, ignore_errors=True)

    def start(self) -> None:
        cfg = self.config
        writable = [self.workdir] + [
            self.workdir / sub for sub in (".tmp", ".mpl", ".ipython", ".jupyter")
        ]
        for path in writable:
            path.mkdir(exist_ok=True)
            if cfg.uid is not None:
                os.chown(path, cfg.uid, cfg.gid if cfg.gid is not None else cfg.uid)
        launch = {
            "workdir": str(self.workdir),
            "uid": cfg.uid,
            "gid": cfg.gid if cfg.gid is not None else cfg.uid,
            "memory_bytes": cfg.memory_bytes,
            "file_bytes": cfg.file_bytes,
            "max_processes": cfg.max_processes,
            "python": self.python,
            "env": kernel_env(self.workdir, self.python),
        }
        launch_file = self._private / "launch.json"
        launch_file.write_text(json.dumps(launch))
        spec_dir = self._private / "kernels" / "sandbox"
        spec_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(LAUNCHER), str(launch_file), "{connection_file}"]
        spec = {"argv": argv, "display_name": "sandbox", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[str(self._private / "kernels")])
        self.km = KernelManager(
            kernel_name="sandbox",
            kernel_spec_manager=ksm,
            connection_file=str(self._private / "connection.json"),
        )
        self.km.start_kernel(cwd=str(self.workdir))
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=cfg.startup_timeout)
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(
                f"the grading kernel did not start: {err}. If the grader runs as root, check that "
                f"uid {cfg.uid} can read and execute {self.python} (e.g. `chmod o+x /root` when "
                "Python lives under /root)."
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
        if self.config.uid is not None:
            kill_uid(self.config.uid)

    def restart(self) -> None:
        self.stop()
        self.start()

    # ---------------------------------------------------------------- execution
    def run(self, code: str, timeout: float | None = None) -> CellRun:
        """Execute ``code``; never raises for anything the code does."""
        assert self.kc is not None and self.km is not None
        limit = self.config.cell_timeout if timeout is None else timeout
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
            except queue.Empty:
                if not self.km.is_alive():
                    run.status = "died" if run.status == "ok" else run.status
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text = content.get("text", "")
                run.output_chars += len(text)
                if sum(map(len, kept)) < self.config.output_chars:
                    kept.append(text)
            elif kind == "error":
                if run.status == "ok":
                    run.status = "error"
                run.ename, run.evalue = content.get("ename", ""), content.get("evalue", "")
                run.traceback = list(content.get("traceback", []))
            elif kind in ("execute_result", "display_data"):
                run.output_chars += len(str(content.get("data", {}).get("text/plain", "")))
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        run.stdout = "".join(kept)[: self.config.output_chars]
        run.seconds = time.monotonic() - start
        return run
