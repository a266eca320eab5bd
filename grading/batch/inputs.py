"""Find the submissions in what an instructor downloaded.

Three layouts are accepted (and may be mixed in one folder):

* notebooks: ``SUBMISSIONS/<anything>.ipynb``, one submission each;
* the zips the notebook's export cell writes: ``SUBMISSIONS/<anything>.zip``;
* Gradescope's "Export Submissions" download: one folder per submission (``submission_<id>/``,
  holding what the student uploaded) and ``submission_metadata.yml`` keyed by those folder names,
  each entry with ``:submitters:`` (a list of ``:name:``, ``:sid:``, ``:email:``). Any other folder
  counts as one submission too (its files are the upload).

Nothing here writes to SUBMISSIONS: the originals are only read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METADATA = "submission_metadata.yml"
#: Uploads are whatever students send: one bigger than this in all (its files' sizes added) is
#: neither hashed, copied nor graded (the grader reads at most 128 MB of notebooks anyway).
MAX_UPLOAD_BYTES = 256 * 2**20
#: ... and one of more files than this (the grader looks at no more entries either).
MAX_UPLOAD_FILES = 10_000
IGNORED = {".ipynb_checkpoints", "__MACOSX", ".DS_Store"}


@dataclass(frozen=True)
class Student:
    """Who handed a submission in, as the LMS export names them (all empty when unknown)."""

    name: str = ""
    """Display name(s); a group submission joins its members with '; '."""
    sid: str = ""
    """Student id(s) (Gradescope's ``:sid:``), joined the same way."""
    email: str = ""
    """E-mail(s), joined the same way."""


@dataclass(frozen=True)
class Submission:
    """One submission: the files of one upload, read-only."""

    id: str
    """Stable, file-system-safe name: the notebook's or zip's stem, or the folder's name."""
    source: Path
    """The original file or folder (never written to)."""
    files: tuple[Path, ...]
    """The upload's files, each below ``source`` (or ``source`` itself for a single file)."""
    student: Student = field(default_factory=Student)
    """The submitter, where the metadata names one."""

    def relative(self, path: Path) -> str:
        """``path``'s name inside the upload (what the grader's submission folder holds)."""
        return path.name if path == self.source else path.relative_to(self.source).as_posix()

    def check_size(self) -> None:
        """Raise ValueError (saying what to do) when the upload is over ``MAX_UPLOAD_FILES`` or
        ``MAX_UPLOAD_BYTES``: hashing or copying it would cost the batch that much time."""
        if len(self.files) > MAX_UPLOAD_FILES:
            raise ValueError(
                f"the upload holds {len(self.files):,} files, over the {MAX_UPLOAD_FILES:,} the "
                "batch reads: ask the student for the notebook or the export cell's zip alone"
            )
        size = sum(path.stat().st_size for path in self.files)
        if size > MAX_UPLOAD_BYTES:
            raise ValueError(
                f"the upload is {size / 2**20:.0f} MB, over the {MAX_UPLOAD_BYTES // 2**20} MB "
                "the batch reads: ask the student for the notebook or the export cell's zip alone"
            )

    def content_sha256(self) -> str:
        """Hash of the upload's file contents only: the same work under another file name (a
        student who uploaded twice, a copied notebook) hashes equal."""
        digests = sorted(hashlib.sha256(path.read_bytes()).digest() for path in self.files)
        return hashlib.sha256(b"".join(digests)).hexdigest()

    def sha256(self) -> str:
        """Hash of the upload's names and contents (the grader's input: a file name can change
        its report, so it is part of the resume key)."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(self.relative(path).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


class _LenientLoader(yaml.SafeLoader):
    """Safe YAML, but a tag this loader does not know (an export written by Ruby may carry
    ``!ruby/object:...`` tags) is read as the plain value under it instead of failing."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_LenientLoader.add_multi_constructor("!", _untagged)


def read_metadata(path: Path) -> dict[str, Student]:
    """Folder name -> submitter(s) from Gradescope's ``submission_metadata.yml``.

    Raises:
        ValueError: the file is not the mapping Gradescope writes; the message says what is wrong.
    """
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LenientLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(
            f"{path} is not readable YAML ({str(err)[:200]}): give the "
            "submission_metadata.yml of Gradescope's export unchanged"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of submission folders, got {type(data)}")
    students = {}
    for folder, entry in data.items():
        people = (entry or {}).get(":submitters") or [] if isinstance(entry, dict) else []
        people = [p for p in people if isinstance(p, dict)]

        def joined(key: str, people: list[dict] = people) -> str:
            return "; ".join(str(p.get(key, "") or "") for p in people if p.get(key))

        students[str(folder)] = Student(joined(":name"), joined(":sid"), joined(":email"))
    return students


def _safe(name: str) -> str:
    """``name`` as a folder name and CSV cell: letters, digits, ``._-`` only, never starting
    with ``.`` (a hidden folder) or ``-`` (an option to shell tools, a formula to spreadsheets)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "submission"


def _files_below(folder: Path) -> tuple[Path, ...]:
    return tuple(
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and not IGNORED & set(p.relative_to(folder).parts)
    )


def discover(root: Path) -> list[Submission]:
    """Every submission under ``root``, sorted by id (ids made unique with a suffix, see
    ``_unique_ids``).

    Raises:
        ValueError: ``root`` is not a folder, or its metadata file cannot be read.
    """
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give the folder holding the submissions")
    meta_path = root / METADATA
    if not meta_path.is_file():
        _refuse_the_folder_above(root)
    students = read_metadata(meta_path) if meta_path.is_file() else {}
    found: list[tuple[str, Path, tuple[Path, ...], Student]] = []
    for path in sorted(root.iterdir()):
        if path.name in IGNORED or path.name == METADATA or path.is_symlink():
            continue
        if path.is_dir():
            files = _files_below(path)
            found.append((path.name, path, files, students.get(path.name, Student())))
        elif path.suffix.lower() in {".ipynb", ".zip"}:
            found.append((path.stem, path, (path,), Student()))
    ids = _unique_ids([(name, path.name) for name, path, _files, _student in found])
    subs = [
        Submission(sid, path, files, student)
        for sid, (_name, path, files, student) in zip(ids, found, strict=True)
    ]
    return sorted(subs, key=lambda s: s.id)


def _unique_ids(names: list[tuple[str, str]]) -> list[str]:
    """One id per ``(name, file name)`` (the stem or folder name, and what was handed in), in
    order, no two equal.

    An upload whose name is already safe keeps it: ``bob.ipynb`` is ``bob`` whatever else is in
    the folder, so a classmate's ``bob!.ipynb`` (also ``bob`` once made safe) can never take
    Bob's row. The others get their safe name if free, else the first ``-2``, ``-3``... that no
    upload holds or claims as its own name: ``bob .ipynb`` beside ``bob.ipynb`` and
    ``bob-2.ipynb`` becomes ``bob-3``. Ties between exact names (``bob.ipynb``, ``bob.zip``) and
    between the others go by file name, which no rename can turn against an exact name.
    """
    safe = [_safe(name) for name, _file in names]
    # Exact names first, so that they get theirs; then the rest, each in file-name order.
    order = sorted(range(len(names)), key=lambda i: (safe[i] != names[i][0], names[i][1]))
    claimed = set(safe)  # a suffixed id must not be any upload's own name
    taken: set[str] = set()
    ids = [""] * len(names)
    for i in order:
        candidate, n = safe[i], 1
        while candidate in taken or (n > 1 and candidate in claimed):
            n += 1
            candidate = f"{safe[i]}-{n}"
        ids[i] = candidate
        taken.add(candidate)
    return ids


def renamed(subs: list[Submission]) -> list[str]:
    """One line per upload whose id is not its own safe name (it clashed with another upload's):
    what the batch prints, so the instructor knows which row is which."""
    lines = []
    for sub in subs:
        name = sub.source.stem if sub.source.is_file() else sub.source.name
        if sub.id != _safe(name):
            lines.append(f"{sub.source.name} is graded as {sub.id!r} ({_safe(name)!r} is taken)")
    return lines


def _refuse_the_folder_above(root: Path) -> None:
    """Stop when ``root`` is the folder above a Gradescope export: graded as it stands, the whole
    class would be one submission (each sub-folder counts as one upload).

    Raises:
        ValueError: naming the folder to give instead.
    """
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if (child / METADATA).is_file():
            raise ValueError(
                f"{root} holds a Gradescope export one level down ({child / METADATA}): "
                f"give that folder, {child}, as SUBMISSIONS"
            )
        inner = [p for p in child.iterdir() if p.is_dir() and p.name.startswith("submission_")]
        if len(inner) > 1:
            raise ValueError(
                f"{child} holds {len(inner)} submission_<id>/ folders, which would be graded as "
                f"one submission: give {child} as SUBMISSIONS (with its {METADATA})"
            )


def shard(submissions: list[Submission], spec: str) -> list[Submission]:
    """The submissions of shard ``K/N`` (K counted from 0, as Slurm array ids usually are).

    A submission's shard depends only on its id (a hash), so every shard job, each listing the
    folder on its own, agrees on the split, and adding a late submission moves no other one.

    Raises:
        ValueError: ``spec`` is not ``K/N`` with 0 <= K < N.
    """
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard {spec!r}: expected K/N with 0 <= K < N, e.g. 0/4 ... 3/4")
    k, n = int(match.group(1)), int(match.group(2))

    def bucket(sub: Submission) -> int:
        return int.from_bytes(hashlib.sha256(sub.id.encode()).digest()[:8], "big") % n

    return [s for s in submissions if bucket(s) == k]
