"""Find the one notebook to grade in whatever a student uploaded, or say clearly what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_NOTEBOOK_BYTES = 64 * 2**20
IGNORED_PARTS = {".ipynb_checkpoints", "__MACOSX"}
#: Caps on what an upload may make the grader read, before any deadline could stop it: files
#: and zip members looked at, candidate notebooks parsed, and their bytes in total.
MAX_ENTRIES = 10_000
MAX_CANDIDATES = 20
MAX_CANDIDATE_BYTES = 128 * 2**20


class SubmissionError(Exception):
    """The submission cannot be graded; the message tells the student what to upload instead."""


@dataclass
class Found:
    """The notebook chosen for grading and what the student should know about the choice."""

    path: Path
    notebook: dict[str, Any]
    """The notebook's JSON (v4: as parsed; older versions converted by nbformat)."""
    notes: list[str]


def _files(root: Path) -> list[Path]:
    """Regular files below ``root`` (no links followed, ignored folders skipped), sorted, at
    most MAX_ENTRIES. Iterative: any depth."""
    found: list[Path] = []
    todo = [root]
    while todo and len(found) < MAX_ENTRIES:
        folder = todo.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name in IGNORED_PARTS or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                todo.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path))
    return sorted(found)[:MAX_ENTRIES]


def _candidates(root: Path, unpack_dir: Path, prefer: str = "") -> tuple[list[Path], list[str]]:
    """Candidate notebooks (zips unpacked into ``unpack_dir``) and everything seen. Files named
    ``prefer`` come first, so decoys never crowd the expected notebook out of the caps."""
    notebooks: list[Path] = []
    seen: list[str] = []
    total = 0

    def room(size: int) -> bool:
        return len(notebooks) < MAX_CANDIDATES and total + size <= MAX_CANDIDATE_BYTES

    for path in sorted(_files(root), key=lambda p: (p.name != prefer, p)):
        rel = path.relative_to(root).as_posix()
        seen.append(rel)
        if path.suffix.lower() == ".ipynb":  # Windows and some browsers upload .IPYNB
            size = path.stat().st_size
            if room(min(size, MAX_NOTEBOOK_BYTES)):
                notebooks.append(path)
                total += min(size, MAX_NOTEBOOK_BYTES)
        elif path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    members = zf.infolist()[:MAX_ENTRIES]
                    for info in sorted(members, key=lambda i: Path(i.filename).name != prefer):
                        name = Path(info.filename)
                        if info.is_dir() or IGNORED_PARTS & set(name.parts):
                            continue
                        seen.append(f"{rel} → {info.filename}")
                        if name.suffix.lower() != ".ipynb" or info.file_size > MAX_NOTEBOOK_BYTES:
                            continue
                        if not room(info.file_size):
                            continue
                        target = unpack_dir / f"{len(notebooks)}" / name.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(target, "wb") as dst:
                            # The header's size is the zip's word: never copy more than it said.
                            dst.write(src.read(info.file_size + 1)[: info.file_size])
                        notebooks.append(target)
                        total += info.file_size
            except Exception as err:  # bad, encrypted, unknown method, corrupt data: this zip only
                seen.append(f"{rel} (not a readable zip: {type(err).__name__})")
    return notebooks, seen


def _is_plain_v4(data: Any) -> bool:
    """Whether parsed JSON is an nbformat 4 notebook the grader can read as it is: cells and
    metadata are what it reads, with ``.get``, and ``runner.code_cells`` joins list sources."""
    return (
        isinstance(data, dict)
        and data.get("nbformat") == 4
        and isinstance(data.get("metadata", {}), dict)
        and isinstance(data.get("cells"), list)
        and all(isinstance(cell, dict) for cell in data["cells"])
    )


def _read(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size == 0:
        raise SubmissionError(f"{path.name} is empty (0 bytes).")
    if size > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(
            f"{path.name} is {size / 2**20:.0f} MB; clear the outputs (Edit → Clear Outputs of "
            "All Cells), save, and export again."
        )
    with open(path, "rb") as f:
        text = f.read(MAX_NOTEBOOK_BYTES).decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except RecursionError as err:
        raise SubmissionError(f"{path.name} is nested too deeply to be a notebook.") from err
    except json.JSONDecodeError as err:
        raise SubmissionError(
            f"{path.name} is not a valid notebook file (JSON error: {err.msg}, line {err.lineno} "
            f"column {err.colno}); the file is probably cut short or was edited outside Jupyter."
        ) from err
    if _is_plain_v4(data):
        # What Jupyter, Colab and otter write: no nbformat needed. Importing it (jsonschema) and
        # its first validation cost ~0.25 CPU-s of every grading, and its v4 reader changes
        # nothing the grader reads (validation errors it only logs).
        return data
    import nbformat  # older formats, which it converts, and anything it rejects with a reason

    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:
        raise SubmissionError(f"{path.name} is not a valid notebook file ({err}).") from err
    if not isinstance(nb.get("cells"), list):
        raise SubmissionError(f"{path.name} has no cells.")
    return nb


def _code_digest(nb: dict[str, Any]) -> bytes:
    """A digest of the notebook's code cells' sources (what the grader runs), in order."""
    digest = hashlib.sha256()
    for cell in nb.get("cells", []) if isinstance(nb.get("cells"), list) else []:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            parts = source if isinstance(source, list) else [source]
            digest.update("".join(p for p in parts if isinstance(p, str)).encode() + b"\0")
    return digest.digest()


def _assignment_name(nb: Any) -> str | None:
    """The assignment a notebook says it belongs to; None when its JSON does not say (in any
    shape: an upload's metadata may be anything)."""
    metadata = nb.get("metadata") if isinstance(nb, dict) else None
    otter = metadata.get("otter") if isinstance(metadata, dict) else None
    name = otter.get("assignment_name") if isinstance(otter, dict) else None
    return name if isinstance(name, str) else None


def find_notebook(
    submission: Path,
    expected_name: str,
    assignment: str,
    work: Path,
    deadline: float = float("inf"),
) -> Found:
    """Pick the notebook to grade from a submission folder (notebooks and zips in any layout).

    At most MAX_CANDIDATES notebooks (MAX_CANDIDATE_BYTES in all) are read, and none after
    ``deadline`` (a ``time.monotonic`` value); one that cannot be read costs only itself.

    Raises:
        SubmissionError: nothing gradable, with a message naming what was found and what to do.
    """
    how = (
        f"Upload {expected_name} (or the zip its last cell exports) for the assignment "
        f"'{assignment}'."
    )
    paths, seen = _candidates(submission, work, prefer=expected_name)
    if not paths:
        listing = ", ".join(seen) if seen else "nothing"
        raise SubmissionError(
            f"No notebook (.ipynb) found in your submission; it contains {listing}. {how}"
        )
    good: list[tuple[Path, dict[str, Any]]] = []
    problems = []
    for path in paths:
        if time.monotonic() > deadline:
            problems.append(f"{path.name} was not read: reading the upload took too long.")
            continue
        try:
            good.append((path, _read(path)))
        except SubmissionError as err:
            problems.append(str(err))
        except Exception as err:  # RecursionError, MemoryError in a parser...: this file only
            problems.append(f"{path.name} could not be read ({type(err).__name__}).")
    if not good:
        raise SubmissionError(
            " ".join(problems)
            + " Open it in JupyterLab to check it; if it does not open, re-download your work. "
            + how
        )

    # The same notebook twice (the file, and the export zip holding it: its outputs and
    # execution counts may differ, its code does not) is one notebook.
    copies, digests, distinct = 0, set(), []
    for path, nb in good:
        digest = _code_digest(nb)
        if digest in digests:
            copies += 1
        else:
            digests.add(digest)
            distinct.append((path, nb))
    good = distinct

    ours = [(p, nb) for p, nb in good if _assignment_name(nb) == assignment] or good
    if len(ours) > 1:
        named = [(p, nb) for p, nb in ours if p.name == expected_name]
        if len(named) != 1:
            names = ", ".join(p.name for p, _ in ours)
            raise SubmissionError(
                f"Your submission holds {len(ours)} notebooks ({names}) and none is clearly the "
                f"one to grade. {how}"
            )
        ours = named
    path, nb = ours[0]
    notes = [f"(skipped: {p})" for p in problems]
    if path.name != expected_name:
        notes.append(f"Graded {path.name} (expected the name {expected_name}; graded anyway).")
    other = _assignment_name(nb)
    if other is not None and other != assignment:
        notes.append(
            f"This notebook says it belongs to the assignment '{other}', not '{assignment}': "
            "check that you uploaded the right file."
        )
    if len(good) > 1:
        notes.append(f"Found {len(good)} notebooks; graded {path.name}.")
    if copies:
        notes.append(f"Left out {copies} copy(ies) with the same code (the export zip's?).")
    return Found(path=path, notebook=nb, notes=notes)
