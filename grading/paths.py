"""Folders the root grader reads from and writes to, opened so that no other user can redirect them.

In the floor sandbox the kernel shares the host's /tmp. It can plant, under a name another
grading will use, a symlink (root's ``mkdir``/``chmod``/write would follow it) or a folder of its
own (it can then swap the files root copies in). So the grader opens the source, submission and
results folders component by component from ``/``, never following a link that an untrusted user
could have made, and refuses a path any of whose folders another user could change:

* every folder on the way belongs to root (or to the grader's own user);
* a folder writable by others (group or world) must be sticky (as /tmp is), and the next entry in
  it must belong to root: in a sticky folder nobody else can rename or remove root's entry;
* a symlink on the way is followed only when root owns it and it lies in a folder nobody else can
  write (``/var/lock -> /run/lock``); the last component is never a symlink.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

#: Symlinks followed on the way (a loop of root's own links ends here).
MAX_LINKS = 40


class UnsafePathError(ValueError):
    """A folder the grader must use can be changed by another user: the message says how."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _others_write(info: os.stat_result) -> bool:
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def open_dir(path: str | os.PathLike[str], create: bool = False, mode: int = 0o700) -> int:
    """A directory fd for ``path``, walked from ``/`` without following any link another user could
    have made (see the module doc); ``create`` makes missing folders (``mode``) with ``mkdirat``
    under checked parents (as ``mkdir -p``). The caller closes the fd.

    Raises:
        UnsafePathError: a folder on the way can be changed by another user, or is not a folder.
    """
    todo = list(Path(os.path.abspath(path)).parts[1:])
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    where, links = "/", 0
    try:
        parent = os.fstat(fd)
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                raise UnsafePathError(f"{path}: '..' is not accepted in a grading path")
            last = not todo
            try:
                info = os.lstat(name, dir_fd=fd)
            except FileNotFoundError as err:
                if not create:  # missing folders on the way are made under checked ones
                    missing = os.path.join(where, name)
                    raise UnsafePathError(f"{path}: {missing} does not exist") from err
                _refuse_to_make_in(parent, os.path.join(where, name), where, path)
                os.mkdir(name, mode, dir_fd=fd)
                info = os.lstat(name, dir_fd=fd)
            here = os.path.join(where, name)
            if _others_write(parent) and not (
                parent.st_mode & stat.S_ISVTX and _trusted_owner(info.st_uid)
            ):
                raise UnsafePathError(
                    f"{path}: {here} lies in {where}, which other users can write (and {here} is "
                    f"not root's own entry in a sticky folder): another user could swap it"
                )
            if stat.S_ISLNK(info.st_mode):
                if last:
                    raise UnsafePathError(f"{path} is a symbolic link: give the real folder")
                if not _trusted_owner(info.st_uid) or _others_write(parent) or links >= MAX_LINKS:
                    raise UnsafePathError(f"{path}: {here} is a link another user could change")
                links += 1
                target = os.readlink(name, dir_fd=fd)
                rest = [*Path(target).parts, *todo]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
                    where, rest = "/", rest[1:]
                    parent = os.fstat(fd)
                todo = rest
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafePathError(f"{path}: {here} is not a folder")
            if not _trusted_owner(info.st_uid):
                raise UnsafePathError(
                    f"{path}: {here} belongs to uid {info.st_uid}, not to root: that user could "
                    "change what the grader reads or writes there"
                )
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd, where = nxt, here
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise UnsafePathError(f"{path}: {here} changed while it was checked")
            parent = opened
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refuse_to_make_in(parent: os.stat_result, here: str, where: str, path: object) -> None:
    """Refuse, before ``mkdir``, a folder that would lie in one others can write, unless that
    one is sticky (root's new entry there is then root's alone): nothing is created."""
    if _others_write(parent) and not parent.st_mode & stat.S_ISVTX:
        raise UnsafePathError(
            f"{path}: {here} would lie in {where}, which other users can write (and which is not "
            "sticky): another user could swap it. Give a folder in one only root can write"
        )


def check_dir(path: str | os.PathLike[str]) -> None:
    """Raise UnsafePathError unless ``path`` is a folder no other user can redirect."""
    os.close(open_dir(path))


def check_new_dir(path: str | os.PathLike[str]) -> None:
    """Raise UnsafePathError unless ``path``, a folder not made yet, can be made (``open_dir``
    with ``create``) where no other user can redirect it. Creates nothing."""
    where = os.path.dirname(os.path.abspath(path))
    with opened_dir(where) as fd:
        _refuse_to_make_in(os.fstat(fd), os.path.abspath(path), where, path)


@contextlib.contextmanager
def opened_dir(path: str | os.PathLike[str], create: bool = False) -> Iterator[int]:
    """``open_dir`` as a context manager."""
    fd = open_dir(path, create=create)
    try:
        yield fd
    finally:
        os.close(fd)
