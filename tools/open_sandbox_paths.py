"""Let the grading sandbox user reach Python, and nothing holding answers: the one script `make
test` and `.ci/run` share.

The grader runs each student kernel as an unprivileged user (as on Gradescope). That user must be
able to *enter* every folder on the way to the interpreter (pyenv lives under a 0700 ``/root``)
and to this checkout's ``.venv`` (a clone may sit in a 0700 ``mktemp -d`` folder). This adds the
traverse bit ``o+x`` to exactly those folders; none becomes listable or writable. Standard library
only, so it runs before ``.venv`` exists.

The other direction: a kernel graded with ``--sandbox floor`` on this machine reads every
world-readable file (red team rt9), and a fresh clone checks the committed solution notebook out
world-readable. So every run (root or not) also closes the folders that hold answers to other
users (:data:`ANSWER_SOURCES`, ``build/``, ``autograder/<name>/`` and its solution).

    python tools/open_sandbox_paths.py          # as root: open the paths (non-root: says why not)
    python tools/open_sandbox_paths.py --check  # list closed folders; exit 1 if any
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Folders of the checkout that hold answers (the master, the reference, the corpus' edits, git's
#: copies of all three), closed to other users as ``build/`` and ``autograder/<name>/`` are.
ANSWER_SOURCES = ("reference", "assignments", "tests", ".git")


def answer_paths(root: Path = ROOT) -> list[Path]:
    """Every path of the checkout that holds answers or expected values and exists."""
    paths = [root / name for name in (*ANSWER_SOURCES, "build")]
    for folder in sorted((root / "autograder").glob("*/")):
        paths += [folder, *sorted(folder.glob("*-solution.ipynb"))]
    return [p for p in paths if p.exists() and not p.is_symlink()]


def close_answer_sources(root: Path = ROOT) -> list[str]:
    """Take every permission of group and others from :func:`answer_paths`; the paths changed."""
    changed = []
    for path in answer_paths(root):
        mode = os.stat(path).st_mode
        if mode & 0o077:
            os.chmod(path, mode & ~0o077)
            changed.append(str(path.relative_to(root)))
    return changed


def targets(python: str = sys.executable) -> set[str]:
    """Paths the sandbox user must reach: this Python, its base install and the checkout's venv."""
    return {
        python,
        os.path.realpath(python),
        os.path.realpath(sys.base_prefix),
        str(ROOT / ".venv"),
    }


def closed_folders(paths: set[str] | None = None) -> list[str]:
    """Folders above ``paths`` that others cannot enter (no ``o+x`` bit), sorted."""
    closed = set()
    for target in paths if paths is not None else targets():
        path = os.path.dirname(os.path.abspath(target))
        while path not in ("/", ""):
            if os.path.exists(path) and not os.stat(path).st_mode & stat.S_IXOTH:
                closed.add(path)
            path = os.path.dirname(path)
    return sorted(closed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only list closed folders")
    args = parser.parse_args(argv)
    if not args.check:
        for name in close_answer_sources():
            print(f"chmod go-rwx {name} (it holds answers; a floor kernel reads what is open)")
    closed = closed_folders()
    if args.check or not closed:
        for path in closed:
            print(f"closed to the sandbox user: {path}")
        return 1 if closed else 0
    if os.geteuid() != 0:
        print(
            "not root: the sandboxed grading tests will be skipped (they switch users, as on "
            "Gradescope). Run `sudo make test` to run them.",
            file=sys.stderr,
        )
        return 0
    for path in closed:
        os.chmod(path, os.stat(path).st_mode | stat.S_IXOTH)  # traverse only: stays unlistable
        print(f"chmod o+x {path} (the sandboxed grading kernel must reach Python)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
