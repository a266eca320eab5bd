"""Check your set-up: `python check_setup.py` imports everything the notebook needs.

It prints each package's version next to the one in requirements.txt (the versions the
autograder runs), checks every other installed package against constraints.txt, says whether
PyTorch is the CPU build, and exits 1 if anything differs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

#: pip name -> module to import, where they differ.
MODULES = {"otter-grader": "otter"}
PYTHON = (3, 11)


def pins(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of a requirements or constraints file (extras dropped)."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-") and "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            found[name.split("[")[0]] = version
    return found


def other_packages(top: dict[str, str]) -> list[str]:
    """Installed packages of constraints.txt (other than ``top``) at another version."""
    wrong = []
    for name, want in pins(Path(__file__).with_name("constraints.txt")).items():
        try:
            got = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # needed on another system than yours
        if name not in top and got.split("+")[0] != want.split("+")[0]:
            wrong.append(f"{name} {got} instead of {want}")
    return wrong


def main() -> int:
    problems = []
    here = sys.version_info[:2]
    print(f"python       {sys.version.split()[0]:<12} (want {PYTHON[0]}.{PYTHON[1]})")
    if here != PYTHON:
        problems.append(f"Python {here[0]}.{here[1]} instead of {PYTHON[0]}.{PYTHON[1]}")
    top = pins(Path(__file__).with_name("requirements.txt"))
    for name, want in top.items():
        try:
            importlib.import_module(MODULES.get(name, name))
            got = importlib.metadata.version(name)
        except Exception as err:  # any import failure is a broken set-up, report it plainly
            print(f"{name:<12} MISSING      ({type(err).__name__}: {err})")
            problems.append(f"{name} does not import")
            continue
        ok = got.split("+")[0] == want
        print(f"{name:<12} {got:<12} {'ok' if ok else f'WANT {want}'}")
        if not ok:
            problems.append(f"{name} {got} instead of {want}")
    others = other_packages(top)
    print(f"others       {'ok' if not others else f'{len(others)} differ: ' + '; '.join(others)}")
    problems += others
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.version.cuda
        print(f"torch build  {'CPU' if cuda is None else f'CUDA {cuda}'}")
        if cuda is not None:
            problems.append("the CUDA build of torch: reinstall with the command in README.md")
    if problems:
        print("\nNOT READY: " + "; ".join(problems))
        print("Fix: run the set-up commands of README.md again in a fresh environment.")
        return 1
    print("\nREADY: every package imports, with the versions the autograder uses.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
