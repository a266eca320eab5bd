"""The trusted half of grading: run a submission in the sandbox, score it outside, report.

Trust boundary (see grading/README.md):

* this process reads the autograder (tests, expected values) and writes results.json; before any
  student code runs it makes the autograder, the submission and the results folder unreadable to
  the sandbox user, and it never creates, ``chown``s or ``chmod``s anything in a folder that user
  can write once student code has run;
* the student's notebook runs cell by cell in a kernel owned by a uid of its own for this run
  (:mod:`grading.uids`, :mod:`grading.sandbox`), in a 0700 directory that holds only the shipped
  support files, the hidden *inputs* and the kernel-side harvester;
* each hidden check's first step runs in that kernel and leaves an ``.npz`` of plain arrays; this
  process opens it without following links, checks owner and size, checks every array's header
  (dtype, shape, bytes) before reading it, never unpickles, and compares it with expected values
  the kernel never saw. Anything wrong with one file costs that check only.

Whatever happens, :func:`grade` writes a results.json with a score and returns it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fnmatch
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from grading import results as gs
from grading import uids
from grading.paths import UnsafePathError, check_dir
from grading.results import clean
from grading.sandbox import (
    GRADESCOPE_SOURCE,
    MAX_MESSAGE_BYTES,
    CellRun,
    Sandbox,
    SandboxConfig,
    mount_workdir,
    unmount_workdir,
    use_namespaces,
)
from grading.submission import SubmissionError, find_notebook

KERNEL_SIDE = Path(__file__).with_name("kernel_side.py")
#: Files of the autograder's files/ folder the kernel must never see.
SECRET_FILES = ("hidden_expected*",)
#: Otter scaffolding cells: dropped (they run tests or export zips, never student answers).
# Otter's own cells: its init (importing otter alone costs ~6 s of every grading), checks and
# export. Only whole cells that are exactly these are skipped; nothing else of a cell is. The
# patterns are matched against the cell with its leading comment lines and surrounding blanks
# removed in plain Python, so no pattern has two quantifiers that compete for the same text
# (the old single regex backtracked quadratically: 4 CPU-s for 32 k spaces).
SCAFFOLDING_PATTERNS = (
    re.compile(r'grader\.check\(\s*"[\w-]+"\s*\)'),
    re.compile(r"grader\.check_all\(\s*\)"),
    re.compile(r"import otter[ \t]*\n\s*grader\s*=\s*otter\.Notebook\([^)]*\)"),
    re.compile(r"grader\.export\([^)]*\)"),
)
#: Longer cells are never scaffolding (otter's are a few hundred characters at most): the
#: patterns then never see more text than this.
MAX_SCAFFOLDING_CHARS = 4_000
CHECK_CELL = re.compile(r'grader\.check\(\s*"([\w-]+)"\s*\)')
ANSWER_TAGS = {"otter_answer_cell", "otter_assign_solution_cell"}
MAX_OUTPUT_FILE = 32 * 2**20
#: Bytes of arrays one hidden check may hand back once inflated, and how many arrays.
MAX_OUTPUT_BYTES = 64 * 2**20
MAX_OUTPUT_ARRAYS = 256
#: Bytes of an .npz's central directory (one ~100-byte record per array): checked before
#: zipfile parses it, which costs CPU and memory per record (650k records: 59 CPU-s, 376 MB).
MAX_CENTRAL_DIRECTORY = MAX_OUTPUT_ARRAYS * 1024
#: dtype kinds accepted from the kernel: bool, integers, floats, complex, strings. No objects.
SAFE_KINDS = set("biufcUS")
HIDDEN_CASE = re.compile(r"^test_(\w+)_hidden$")


def _phase(name: str) -> None:
    """With GRADING_PHASES=1: a stderr line per phase, for benchmarks/grading_resources.py."""
    if os.environ.get("GRADING_PHASES"):
        print(f"grading phase {name} {time.monotonic():.3f}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Question:
    """One graded question: its points are split evenly over its hidden checks."""

    name: str
    points: float
    checks: tuple[str, ...]
    failure_messages: dict[str, str]


@dataclass
class GradingConfig:
    """What the grader needs besides the autograder folder."""

    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """Identity and limits of the student's kernel."""
    check_timeout: float = 30.0
    """Seconds one hidden check may run the student's code (the slowest takes ~3 s here)."""
    budget: float = 420.0
    """Seconds for the notebook's cells and replays; hidden checks stop at the same mark."""
    deadline: float = 540.0
    """Seconds after which no wait of the run may continue (Gradescope stops at 600 with no
    results at all): every cell, check, replay and kernel start is cut to fit."""
    max_restarts: int = 2
    """Kernel restarts allowed after cells that ignore interrupts or kill the kernel."""
    reverse_checks: bool = False
    """Run the hidden checks last-first (tests show the scores do not depend on the order)."""


@dataclass
class NotebookCell:
    number: int
    section: str
    source: str
    answer: bool = False
    """Tagged by otter as an answer cell (student or solution notebook)."""
    question: str | None = None
    """The question whose ``grader.check`` cell comes next: the one this cell answers."""
    run: CellRun | None = None


@dataclass(frozen=True)
class _Case:
    """One ``@test_case(...)`` of an otter test file: what the grader needs of it."""

    function: str
    points: float | None
    hidden: bool
    failure_message: str | None


class _NotPlainError(ValueError):
    """A test file this module's parser does not read (otter's own parser does it then)."""


#: Names whose use anywhere else in a test file's top level sends it to otter's parser.
OTTER_NAMES = frozenset({"name", "points", "test_case", "globals", "vars", "exec", "eval"})


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        raise _NotPlainError(f"not a literal: {ast.dump(node)[:80]}") from err


def _parse_test_file(source: str) -> tuple[str, float, list[_Case]]:
    """``(name, possible points, cases)`` of an otter exception-test file, read with ``ast``.

    Otter's own parser (``ExceptionTestFile``) costs an ``import otter``: pandas, nbconvert,
    ipywidgets, ~0.6 CPU-s of every grading (at Gradescope's 0.5 CPU, over a second of wall).
    The files ``otter assign`` writes are plain: literal ``name``/``points`` and ``@test_case``
    decorators with literal keywords. Anything else raises _NotPlainError and otter reads the
    file (``tests/test_hidden_checks.py`` checks both agree on every file of the release).
    """
    name, total, cases, seen = None, None, [], set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("name", "points") for t in node.targets
        ):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                raise _NotPlainError("a chained or unpacking assignment of name/points")
            if node.targets[0].id == "name":
                name = _literal(node.value)
            else:
                total = _literal(node.value)
        elif isinstance(node, ast.FunctionDef) and node.decorator_list:
            (decorator,) = node.decorator_list  # one decorator: @test_case(...)
            if (
                not (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Name)
                    and decorator.func.id == "test_case"
                    and not decorator.args
                    and all(k.arg for k in decorator.keywords)
                )
                or node.name in seen
            ):
                raise _NotPlainError(f"test function {node.name}")
            seen.add(node.name)
            kw = {k.arg: _literal(k.value) for k in decorator.keywords}
            hidden, message = bool(kw.get("hidden")), kw.get("failure_message")
            cases.append(_Case(node.name, kw.get("points"), hidden, message))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = {a.asname or a.name for a in node.names} & OTTER_NAMES
            plain = isinstance(node, ast.ImportFrom) and node.module == "otter.test_files"
            if bound - ({"test_case"} if plain else set()):
                raise _NotPlainError(f"an import binds {sorted(bound)}")
        elif any(getattr(n, "id", None) in OTTER_NAMES for n in ast.walk(node)):
            raise _NotPlainError("name, points or test_case set or used another way")
    if not isinstance(name, str) or not cases:
        raise _NotPlainError("no name or no test case")
    return name, _resolve_points(total, cases), cases


def _resolve_points(total: Any, cases: list[_Case]) -> float:
    """The file's possible points, as otter's ``resolve_test_file_points`` sums them."""
    if isinstance(total, list):
        if len(total) != len(cases):
            raise _NotPlainError("a points list of another length than the cases")
        cases = [dataclasses.replace(c, points=p) for c, p in zip(cases, total)]
        total = None
    values = [c.points for c in cases]
    if any(v is not None and type(v) not in (int, float) for v in values):
        raise _NotPlainError("a case's points are not a number")
    if total is not None and type(total) not in (int, float):
        raise _NotPlainError("points is not a number")
    given = sum(v for v in values if v is not None)
    unset = sum(v is None for v in values)
    if total is not None:
        if given > total:
            raise _NotPlainError("more points in the cases than in the file")
        rest = (total - given) / unset if unset else 0.0
    elif given == 0 and all(v in (0, None) for v in values):
        rest = 1 / unset if unset else 0.0
    else:
        rest = 0.0
    return sum(v if v is not None else rest for v in values)


def _otter_test_file(path: Path) -> tuple[str, float, list[_Case]]:
    """The same as ``_parse_test_file``, read by otter itself (any file otter accepts)."""
    from otter.test_files.exception_test import ExceptionTestFile

    test_file = ExceptionTestFile.from_file(str(path))
    cases = [
        _Case(c.body.test_func.__name__, c.points, c.hidden, c.failure_message)
        for c in test_file.test_cases
    ]
    return test_file.name, test_file.possible, cases


def load_questions(tests_dir: Path) -> list[Question]:
    """Questions, points and hidden checks from otter's generated test files."""
    questions = []
    for path in sorted(tests_dir.glob("*.py")):
        try:
            name, possible, cases = _parse_test_file(path.read_text(encoding="utf-8"))
        except (SyntaxError, ValueError):  # _NotPlainError included: otter reads it then
            name, possible, cases = _otter_test_file(path)
        checks, messages = [], {}
        for case in cases:
            match = HIDDEN_CASE.match(case.function)
            if case.hidden and match:
                checks.append(match.group(1))
                messages[match.group(1)] = case.failure_message or ""
        if not checks:
            raise RuntimeError(f"{path.name}: no hidden test named test_<check>_hidden")
        questions.append(
            # otter splits the points over every case in floats (4 over 6: 3.9999999999999996)
            Question(name, round(float(possible), 6), tuple(checks), messages)
        )

    def order(q: Question) -> tuple[int, str]:
        number = re.match(r"q(\d+)", q.name)
        return (int(number.group(1)) if number else 10**6, q.name)

    return sorted(questions, key=order)


def _load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_scaffolding(source: str) -> bool:
    """Whether a code cell is one of otter's own (init, check, check_all, export) and nothing
    else. Linear in the cell's length, and only cells of MAX_SCAFFOLDING_CHARS are matched."""
    if len(source) > MAX_SCAFFOLDING_CHARS:
        return False
    lines = source.strip().split("\n")
    comments = 0
    while comments < len(lines) and lines[comments].lstrip().startswith("#"):
        comments += 1
    body = "\n".join(lines[comments:]).strip()
    check, check_all, init, export = SCAFFOLDING_PATTERNS
    if comments == 0 and (check.fullmatch(body) or check_all.fullmatch(body)):
        return True
    return bool(init.fullmatch(body) or export.fullmatch(body))


def check_cell(source: str) -> str | None:
    """The question a ``grader.check("q1")`` cell checks, or None for any other cell."""
    if len(source) > MAX_SCAFFOLDING_CHARS:
        return None
    match = CHECK_CELL.fullmatch(source.strip())
    return match.group(1) if match else None


def code_cells(nb: Mapping[str, Any]) -> tuple[list[NotebookCell], int]:
    """The cells to run (numbered from 1 as in the notebook) and how many demos were skipped."""
    cells, section, skipped = [], "the top of the notebook", 0
    # Answer cells since the last check: the next check's question is theirs. (Red team rt11:
    # walking back over every earlier cell at each check cost plain cells x checks, 668 CPU-s
    # for an 18 MB notebook, before the kernel started and past the run's deadline.)
    waiting: list[NotebookCell] = []
    listed = nb.get("cells")
    for number, cell in enumerate(listed if isinstance(listed, list) else [], start=1):
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(part for part in source if isinstance(part, str))
        source = source if isinstance(source, str) else ""
        if cell.get("cell_type") == "markdown":
            heading = next((ln for ln in source.splitlines() if ln.startswith("#")), None)
            if heading:
                section = heading.lstrip("#").strip()
            continue
        if cell.get("cell_type") != "code" or not source.strip():
            continue
        # The upload's JSON as written, valid or not: metadata of any shape must not crash us.
        metadata = cell.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        tags = metadata.get("tags")
        tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
        # Exactly what otter's own runner skips (a "# IGNORE" first line is otter-assign's marker
        # in the master, never in a hand-out: a student's comment must not hide an answer).
        otter_meta = metadata.get("otter")
        if "otter_ignore" in tags or (isinstance(otter_meta, dict) and otter_meta.get("ignore")):
            skipped += 1
            continue
        check = check_cell(source)
        if check:  # answer cells since the previous check belong to this question
            for earlier in waiting:
                earlier.question = check
            waiting.clear()
        if is_scaffolding(source):
            continue
        answer = bool(ANSWER_TAGS & set(tags))
        cells.append(NotebookCell(number=number, section=section, source=source, answer=answer))
        if answer:
            waiting.append(cells[-1])
    return cells, skipped


class GradingInterrupted(BaseException):
    """The grader got a signal that asks it to stop (see ``interrupt_on_signals``)."""


def _interrupt(signum: int, _frame: object) -> None:
    raise GradingInterrupted(signal.Signals(signum).name)


#: Signals after which the grader stops: an instructor's Ctrl-C or `timeout`, a batch runner, a
#: closed terminal. Each ends the kernel, writes a report and cleans up like a normal end.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def interrupt_on_signals() -> None:
    """Make STOP_SIGNALS raise GradingInterrupted in the main thread (call from it)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """STOP_SIGNALS ignored while the clean-up runs (in the main thread; elsewhere as is)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _lock(path: Path) -> None:
    """Make ``path`` unreachable for every user but this one."""
    if path.exists():
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


def _read_outputs(path: Path, uid: int | None) -> dict[str, np.ndarray]:
    """Load a kernel-written .npz without trusting it: no links (the folder included), no FIFOs
    (O_NONBLOCK: opening one would wait forever for a writer), right owner, bounded size."""
    no_follow = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    folder = os.open(path.parent, no_follow | os.O_DIRECTORY)
    try:
        fd = os.open(path.name, no_follow, dir_fd=folder)
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if uid is not None and info.st_uid != uid:
            raise ValueError("not written by the notebook's kernel")
        if info.st_size > MAX_OUTPUT_FILE:
            raise ValueError(f"{info.st_size} bytes is too large")
        data = f.read(MAX_OUTPUT_FILE + 1)
    if len(data) > MAX_OUTPUT_FILE:
        raise ValueError("too large")
    return load_npz(data)


def _check_zip_directory(data: bytes) -> None:
    """Refuse, from the end-of-central-directory record alone (a few bytes at the end), a zip
    whose directory lists more than MAX_OUTPUT_ARRAYS entries or takes more than
    MAX_CENTRAL_DIRECTORY bytes. zipfile parses whatever size the record gives, however many
    records it holds, so bounding the size bounds the work even when the count lies.

    Raises:
        ValueError: no end record, or one over either bound (the message says which).
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or len(data) - end < 22:
        raise ValueError("not an .npz file (no zip end record)")
    *_, count, size, _offset, _comment = struct.unpack("<4s4H2LH", data[end : end + 22])
    locator = end - 20
    if (count == 0xFFFF or size == 0xFFFFFFFF) and data[locator : locator + 4] == b"PK\x06\x07":
        (at,) = struct.unpack("<Q", data[locator + 8 : locator + 16])
        record = data[at : at + 56]
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            raise ValueError("not an .npz file (a broken zip64 end record)")
        count, size = struct.unpack("<QQ", record[32:48])  # entries in all, directory bytes
    if count > MAX_OUTPUT_ARRAYS:
        raise ValueError(f"{count} arrays (at most {MAX_OUTPUT_ARRAYS})")
    if size > MAX_CENTRAL_DIRECTORY:
        raise ValueError(f"a zip directory of {size} bytes (at most {MAX_CENTRAL_DIRECTORY})")


def load_npz(data: bytes, max_bytes: int = MAX_OUTPUT_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by untrusted code, each header checked before its data
    is read: a known version, a plain dtype (no objects, no pickles), and a declared size that,
    summed over the arrays, stays within ``max_bytes``. Reading stops at the declared size, so a
    deflate bomb or a lying header costs at most ``max_bytes``.

    Raises:
        ValueError: the file breaks one of these rules (the message says which).
    """
    fmt = np.lib.format
    arrays: dict[str, np.ndarray] = {}
    total = 0
    _check_zip_directory(data)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ValueError(f"not an .npz file ({err})") from err
    with zf:
        members = zf.infolist()
        if len(members) > MAX_OUTPUT_ARRAYS:
            raise ValueError(f"{len(members)} arrays (at most {MAX_OUTPUT_ARRAYS})")
        for member in members:
            name = member.filename.removesuffix(".npy")
            if name == member.filename:
                raise ValueError(f"unexpected member {member.filename[:80]!r}")
            if member.file_size > max_bytes + 2**16:
                raise ValueError(f"array {name[:80]!r} larger than {max_bytes / 2**20:g} MB")
            with zf.open(member) as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
                else:
                    raise ValueError(f"array {name[:80]!r}: .npy version {version} not accepted")
                if dtype.hasobject or dtype.kind not in SAFE_KINDS or dtype.itemsize == 0:
                    raise ValueError(f"array {name[:80]!r}: dtype {dtype} not accepted")
                nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
                total += nbytes
                if total > max_bytes:
                    raise ValueError(f"arrays larger than {max_bytes / 2**20:g} MB")
                raw = f.read(nbytes + 1)
            if len(raw) != nbytes:
                raise ValueError(f"array {name[:80]!r}: {len(raw)} bytes, header says {nbytes}")
            flat = np.frombuffer(raw, dtype=dtype)
            arrays[name] = flat.reshape(shape, order="F" if fortran else "C").copy()
    return arrays


def _describe(run: CellRun, cell_timeout: float) -> str:
    if run.status == "timeout":
        return f"was stopped after {cell_timeout:.0f} s (an endless loop, or far too slow)"
    if run.status == "died" and run.flooded:
        return (
            f"sent one output of over {MAX_MESSAGE_BYTES // 2**20} MB at once (a huge print?), "
            "so the grader cut the kernel off: print less"
        )
    if run.status == "died" and run.machine_oom:
        return (
            "was running when the grading machine ran out of memory (the notebook stayed within "
            "its own memory limit: not your code's fault; please submit again)"
        )
    if run.status == "died":
        return "crashed the Python kernel (out of memory, or a hard crash)"
    if run.ename == "MemoryError" or "can't allocate memory" in run.evalue:
        return f"ran out of memory ({run.ename}: {run.evalue[:200]})"
    return f"raised {clean(run.ename, 100)}: {clean(run.evalue, 300)}"


def _error_line(cell: NotebookCell, timeout: float) -> str:
    assert cell.run is not None
    first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")[:80]
    where = f"question {cell.question}, " if cell.question else ""
    what = _describe(cell.run, timeout)
    return f"cell {cell.number} ({where}under '{cell.section}', starting `{first}`) {what}"


class Grader:
    """Grade one submission against one unzipped autograder folder."""

    def __init__(self, source: Path, config: GradingConfig | None = None) -> None:
        self.source = Path(source)
        self.config = config or GradingConfig()
        otter_config = json.loads((self.source / "otter_config.json").read_text())
        self.assignment = otter_config["assignment_name"]
        self.seed = int(otter_config.get("seed") or 0)
        self.show_hidden = bool(otter_config.get("show_hidden", False))
        self.questions = load_questions(self.source / "tests")
        self.checks = _load_module(self.source / "files" / "hidden_checks.py", "_trusted_checks")
        graded = {c for q in self.questions for c in q.checks}
        registry = getattr(self.checks, "REGISTRY", {})
        self.blame_from: dict[str, tuple[str, ...]] = {
            name: tuple(decl.uses)
            for name, decl in registry.items()
            if name in graded and set(decl.uses) <= graded
        }
        """check -> the checks it uses, when each is graded on its own. Such a check's harvest
        does not run them again (it did so only to blame them when it fails: ~0.6 CPU-s per
        grading); ``_score_check`` blames with the outputs of their own harvests instead."""
        self.sandbox_uid: int | None = None
        """The uid the last run's kernel had (for the record: it is free again afterwards)."""
        self._expected: dict[str, np.ndarray] | None = None
        """Every expected array, read at the first comparison (see ``_expected_values``)."""

    # ------------------------------------------------------------------ sandbox set-up
    def _prepare_workdir(
        self, workdir: Path, notebook: Path, uid: int | None, gid: int | None
    ) -> None:
        """Fill the kernel's folder while no student code runs yet, then hand it over."""
        for entry in sorted((self.source / "files").iterdir()):
            if any(fnmatch.fnmatch(entry.name, pattern) for pattern in SECRET_FILES):
                continue
            target = workdir / entry.name
            if entry.is_dir():
                shutil.copytree(entry, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copyfile(entry, target)
        shutil.copyfile(KERNEL_SIDE, workdir / "_grading_kernel.py")
        shutil.copyfile(notebook, workdir / f"{self.assignment}.ipynb")
        for path in [workdir, *workdir.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        (workdir / ".outputs").mkdir()
        if uid is not None:
            # The last root operations in it: from here on the kernel may change anything inside.
            for path in (workdir / ".outputs", workdir):
                os.chown(path, uid, gid if gid is not None else uid)
            os.chmod(workdir, 0o700)

    # ------------------------------------------------------------------ grading
    def grade(
        self, submission: Path, results_dir: Path, start: float | None = None
    ) -> dict[str, Any]:
        """Grade ``submission`` (a folder) and write ``results_dir/results.json``; never raises
        but for a results folder another user could redirect (UnsafePathError: nothing is
        written then).

        ``start`` (a ``time.monotonic`` value, default now) is when the run's budget and deadline
        start counting: the grader's start, so that reading the upload counts too. results.json
        is written as soon as the kernel is dead; the clean-up of the run's uid and scratch
        comes after it (a kernel that leaves much behind delays the exit, never the report).
        A GradingInterrupted (the grader got SIGTERM/SIGINT/SIGHUP) still ends the kernel,
        writes a report saying so and cleans up.
        """
        start = time.monotonic() if start is None else start
        _phase("start")
        results_dir = Path(results_dir)
        rooted = self.config.sandbox.uid is not None
        # Opened (and its space reserved) before anything else: no link is followed to it, and a
        # disk filled meanwhile cannot cost the report.
        out = gs.ResultsFile(results_dir)
        try:
            if rooted:  # before any student code: the kernel never reaches the report
                os.fchmod(out.dir_fd, 0o700)
            with contextlib.ExitStack() as cleanup:
                try:
                    result = self._guarded(Path(submission), start, cleanup)
                    result["execution_time"] = round(time.monotonic() - start, 1)
                    out.write(self._valid(result))
                    _phase("report")
                finally:
                    # A second signal must not cut the clean-up short; what it could not remove
                    # is the grader's problem, said on stderr (the report is written already).
                    with _signals_ignored():
                        try:
                            cleanup.close()
                        except Exception as err:
                            print(f"grading: clean-up incomplete: {err}", file=sys.stderr)
                    _phase("cleanup")
        finally:
            out.close()
        return result

    def _guarded(
        self, submission: Path, start: float, cleanup: contextlib.ExitStack
    ) -> dict[str, Any]:
        """The run's report: ``_grade``'s, or a zero saying why there is none."""
        try:
            if self.config.sandbox.uid is not None:
                for path in (self.source, submission):
                    check_dir(path)
            return self._grade(submission, start, cleanup)
        except UnsafePathError as err:
            print(f"grading: refused: {err}", file=sys.stderr)
            return self._zero(f"The grader refused to run: {err}. Tell the course staff.")
        except SubmissionError as err:
            return self._zero(f"Your submission could not be graded: {err}")
        except GradingInterrupted as err:
            print(f"grading: interrupted by {err}", file=sys.stderr)
            return self._zero(
                f"The grading was interrupted ({err}) before it finished; nothing is wrong with "
                "your work as far as this report knows. Submit again or tell the course staff."
            )
        except Exception:
            print(traceback.format_exc(), file=sys.stderr)
            return self._zero(
                "The autograder itself failed on this submission (a bug in the grader, not "
                "necessarily in your work). Your upload is kept; tell the course staff."
            )

    def _valid(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` cleaned, or a zero when Gradescope would reject it."""
        try:
            result = gs.sanitise(result)
            problems = gs.validate(result)
        except Exception as err:
            problems = [f"{type(err).__name__}: {err}"]
        if problems:  # never hand Gradescope a file it rejects: that would show no score at all
            print("results.json problems: " + "; ".join(problems), file=sys.stderr)
            result = self._zero("The autograder produced an invalid report; tell the course staff.")
            result["execution_time"] = 0.0
        return result

    def _zero(self, message: str) -> dict[str, Any]:
        tests = [
            {
                "name": q.name,
                "score": 0.0,
                "max_score": q.points,
                "status": "failed",
                "output": "Not graded: see the message at the top.",
                "visibility": "visible",
            }
            for q in self.questions
        ]
        return {"score": 0.0, "output": message, "tests": tests, "stdout_visibility": "hidden"}

    def _grade(
        self, submission: Path, start: float, cleanup: contextlib.ExitStack
    ) -> dict[str, Any]:
        sandbox = self.config.sandbox
        if sandbox.uid is None:
            return self._grade_as(submission, start, sandbox, cleanup)
        # Entered into ``cleanup``: the uid is ended (and released) after results.json is written.
        uid = cleanup.enter_context(uids.reserve(None if sandbox.uid == "fresh" else sandbox.uid))
        self.sandbox_uid = uid
        gid = sandbox.gid if sandbox.gid is not None else uid
        sandbox = dataclasses.replace(sandbox, uid=uid, gid=gid)
        return self._grade_as(submission, start, sandbox, cleanup)

    def _grade_as(
        self,
        submission: Path,
        start: float,
        sandbox: SandboxConfig,
        cleanup: contextlib.ExitStack,
    ) -> dict[str, Any]:
        # The run's scratch tree: scratch/ (root, 0711) holds private/ (root, 0700: the upload
        # unpacked, the kernel's launch files) and work/ (the run's uid, 0700). Removed after
        # results.json is written, once the kernel is gone: any depth, names and permissions the
        # kernel left; raises (the grader's failure, loudly, on stderr) if anything remains.
        scratch = Path(tempfile.mkdtemp(prefix="grading-"))
        cleanup.callback(uids.remove_tree, scratch)
        private = scratch / "private"
        private.mkdir(mode=0o700)
        if sandbox.uid is not None:
            _lock(self.source)
            _lock(submission)
            if self.source == GRADESCOPE_SOURCE:
                # Gradescope's metadata holds the earlier submissions' results, hidden checks'
                # messages included: in the floor the kernel could print them (red team rt9).
                _lock(self.source.parent / "submission_metadata.json")
            os.chmod(scratch, 0o711)
        found = find_notebook(
            submission,
            f"{self.assignment}.ipynb",
            self.assignment,
            private / "unpacked",
            deadline=start + self.config.budget / 4,
        )
        cells, skipped = code_cells(found.notebook)
        workdir = scratch / "work"
        workdir.mkdir()
        if use_namespaces(sandbox):
            # Its own capped tmpfs: the kernel can fill neither the disk nor the RAM.
            mount_workdir(workdir, sandbox)
            cleanup.callback(unmount_workdir, workdir)
        uid = sandbox.uid if isinstance(sandbox.uid, int) else None
        self._prepare_workdir(workdir, found.path, uid, sandbox.gid)
        outputs, restarts = self._execute(workdir, private, cells, start, sandbox)
        return self._report(found.notes, cells, skipped, outputs, restarts)

    def _execute(
        self,
        workdir: Path,
        private: Path,
        cells: list[NotebookCell],
        start: float,
        sandbox_config: SandboxConfig,
    ) -> tuple[dict[str, dict[str, np.ndarray] | str], int]:
        """Run the cells, then harvest every hidden check; return the outputs and restarts."""
        cfg = self.config
        cell_timeout = sandbox_config.cell_timeout
        uid = sandbox_config.uid if isinstance(sandbox_config.uid, int) else None
        out_dir = workdir / ".outputs"
        setup = f"import _grading_kernel as __grading__\n__grading__.install({self.seed})"
        first_setup = setup.removesuffix(")") + ", pause_gc=True)"  # the first start's
        restarts = 0
        done: list[NotebookCell] = []  # cells that ran and left the kernel alive: replayed
        outputs: dict[str, dict[str, np.ndarray] | str] = {}
        budget_end, deadline = start + cfg.budget, start + cfg.deadline
        death = ""  # what killed the kernel last, for the checks that could not run

        def left() -> float:
            return budget_end - time.monotonic()

        with Sandbox(workdir, sandbox_config, private=private, deadline=deadline) as sandbox:

            def restart() -> None:
                """Start over, replaying the cells that ran (never the one that killed the
                kernel, which would kill it again), within the time budget. A cell that kills
                the kernel on its replay is dropped too, and the replay starts again."""
                nonlocal restarts, death
                while left() > 0:
                    restarts += 1
                    try:
                        sandbox.restart()
                    except RuntimeError as err:  # e.g. the notebook shadowed ipykernel's modules
                        death = f"{death}; then it could not be restarted ({clean(err, 300)})"
                        return
                    sandbox.run(setup)
                    for earlier in list(done):
                        if left() <= 0:
                            return
                        sandbox.run(earlier.source, timeout=min(cell_timeout, left()))
                        if not sandbox.alive():
                            done.remove(earlier)
                            break
                    else:
                        return

            # The notebook's set-up (its imports): every cell before the first answer cell. It
            # runs with the cyclic garbage collector paused (kernel_side.install), answers never.
            first_answer = next((i for i, c in enumerate(cells) if c.answer), 0)
            setup_end = max(first_answer - 1, 0)
            sandbox.run(first_setup if first_answer else setup)
            _phase("kernel")
            for index, cell in enumerate(cells):
                if left() <= 0:
                    break
                cell.run = sandbox.run(cell.source, timeout=min(cell_timeout, left()))
                if index == setup_end:
                    _phase("imports")
                    if first_answer and sandbox.alive() and left() > 0:
                        sandbox.run("__grading__.resume_gc()", timeout=min(cell_timeout, left()))
                if sandbox.alive():
                    if cell.run.status != "timeout":  # an interrupted cell would only time out
                        done.append(cell)
                    continue
                death = _error_line(cell, cell_timeout)
                if restarts >= cfg.max_restarts:
                    break
                restart()
            _phase("cells")
            order = [c for q in self.questions for c in q.checks]
            for check in reversed(order) if cfg.reverse_checks else order:
                if left() <= 0:
                    outputs[check] = (
                        f"not run: the notebook used up the grading time ({cfg.budget:.0f} s)"
                    )
                    continue
                if not sandbox.alive():
                    outputs[check] = f"not run: the Python kernel was dead ({death})"
                    continue
                path = out_dir / f"{check}.npz"
                uses = check not in self.blame_from
                code = f"__grading__.harvest({check!r}, globals(), {str(path)!r}, uses={uses})"
                run = sandbox.run(code, timeout=cfg.check_timeout)
                if not sandbox.alive():
                    death = f"hidden check {check} {_describe(run, cfg.check_timeout)}"
                    restart()  # the budget, not a count, bounds these: each check gets its chance
                if run.status == "timeout":
                    outputs[check] = (
                        f"your code was stopped after {cfg.check_timeout:.0f} s on the hidden "
                        "inputs (an endless loop, or far too slow)"
                    )
                elif run.status != "ok":
                    outputs[check] = (
                        f"checking your code failed: {_describe(run, cfg.check_timeout)}"
                    )
                else:
                    try:
                        outputs[check] = _read_outputs(path, uid)
                    except Exception as err:
                        outputs[check] = (
                            "the outputs of your code could not be read "
                            f"({type(err).__name__}: {clean(err, 200)})"
                        )
            _phase("hidden checks")
        return outputs, restarts

    def _with_uses(
        self,
        check: str,
        got: dict[str, np.ndarray],
        outputs: dict[str, dict[str, np.ndarray] | str],
    ) -> dict[str, np.ndarray]:
        """``got`` and, for blame, the outputs of the checks ``check`` uses from their own
        harvests (only their ``name/...`` arrays). A check whose harvest left none (it timed
        out, crashed or was not run) is blamed for the missing outputs, as it failed anyway."""
        merged = dict(got)
        for used in self.blame_from.get(check, ()):
            theirs = outputs.get(used)
            if isinstance(theirs, dict):
                merged.update((k, v) for k, v in theirs.items() if k.startswith(f"{used}/"))
        return merged

    def _expected_values(self) -> dict[str, np.ndarray] | None:
        """Every expected array, read once for all the comparisons (each comparison reading the
        file again cost ~0.02 CPU-s per grading); None for a check engine without ``_load``,
        whose ``compare`` then reads its own."""
        if self._expected is None and hasattr(self.checks, "_load"):
            self._expected = self.checks._load(self.checks.EXPECTED)
        return self._expected

    def _score_check(
        self,
        check: str,
        got: dict[str, np.ndarray] | str,
        outputs: dict[str, dict[str, np.ndarray] | str] | None = None,
    ) -> tuple[bool, str]:
        if isinstance(got, str):
            return False, got
        try:
            if "__error__" in got:
                return False, clean(got["__error__"], 1_000)
            merged = self._with_uses(check, got, outputs or {})
            self.checks.compare(check, merged, fixtures=self._expected_values())
        except AssertionError as err:
            return False, clean(err, 1_000)
        except Exception as err:  # malformed arrays from the kernel: a failed check, not a crash
            return False, f"your outputs have the wrong type or shape ({type(err).__name__}: {err})"
        return True, ""

    def _report(
        self,
        notes: list[str],
        cells: list[NotebookCell],
        skipped: int,
        outputs: dict[str, dict[str, np.ndarray] | str],
        restarts: int,
    ) -> dict[str, Any]:
        timeout = self.config.sandbox.cell_timeout
        failing = [c for c in cells if c.run is not None and c.run.status != "ok"]
        not_run = [c for c in cells if c.run is None]
        tests, total = [], 0.0
        for q in self.questions:
            per_check = q.points / len(q.checks)
            lines, score = [], 0.0
            for check in q.checks:
                ok, why = self._score_check(check, outputs.get(check, "not run"), outputs)
                if ok:
                    score += per_check
                    lines.append(f"✓ hidden check {check}: passed")
                else:
                    hint = q.failure_messages.get(check, "")
                    lines.append(
                        f"✗ hidden check {check}: {why}" + (f"\n  Hint: {hint}" if hint else "")
                    )
            for cell in failing:
                if cell.question == q.name:
                    lines.append(f"Your {_error_line(cell, timeout)}.")
            score = round(score, 6)
            total += score
            tests.append(
                {
                    "name": q.name,
                    "score": score,
                    "max_score": q.points,
                    "status": "passed" if score >= q.points - 1e-9 else "failed",
                    "output": "\n".join(lines),
                    "visibility": "visible" if self.show_hidden else "after_published",
                }
            )
        report = [*notes]
        if failing:
            report.append(f"{len(failing)} cell(s) of your notebook did not finish:")
            report += [f"  - {_error_line(c, timeout)}" for c in failing]
            report.append(
                "Code after an error in the same cell did not run, and later cells that need it "
                "fail too: run your notebook top to bottom (Kernel → Restart and Run All) before "
                "submitting."
            )
        else:
            report.append(f"All {len(cells)} graded code cells ran without errors.")
        if not_run:
            report.append(f"{len(not_run)} cell(s) were not run: the grading time ran out first.")
        if restarts:
            report.append(f"The Python kernel had to be restarted {restarts} time(s).")
        if skipped:
            report.append(
                f"{skipped} demo cell(s) tagged otter_ignore were not run (they are not graded)."
            )
        chars = sum(c.run.output_chars for c in cells if c.run is not None)
        if chars > 1_000_000:
            report.append(
                f"Your notebook printed {chars:,} characters; only errors are reported here."
            )
        tests.append(
            {
                "name": "Notebook report",
                "score": 0.0,
                "max_score": 0.0,
                "output": "\n".join(report),
                "visibility": "visible",
            }
        )
        possible = sum(q.points for q in self.questions)
        summary = f"Autograded score: {round(total, 6):g} / {possible:g}."
        if failing:
            summary += " Some cells of your notebook raised errors: see 'Notebook report'."
        return {
            "score": round(total, 6),
            "output": summary,
            "tests": tests,
            "stdout_visibility": "hidden",
        }
