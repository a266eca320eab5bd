"""The half of grading that runs inside the student's kernel, as the student.

Copied into the sandbox as ``_grading_kernel.py``. Nothing here is trusted: it only runs the
student's functions on the hidden *inputs* and writes what they returned to a file. The trusted
grading process reads that file and does every comparison with expected values itself, so
tampering with this module, numpy, torch or builtins can change only the student's own outputs.
"""

from __future__ import annotations

import gc
import inspect
import random
import sys
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed every generator a notebook may use (torch only once the notebook imported it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


class SkippedOtter:
    """Stands for otter's ``grader``, whose set-up cell the grader skips: a ``grader.check(...)``
    or ``grader.export(...)`` left in an answer cell does nothing, where a NameError would stop
    the cell before it defines the answer (red team rt10 merged a check cell into one)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def install(seed: int, pause_gc: bool = False) -> None:
    """Reseed before every cell, as otter does, so no answer depends on the cells run before it;
    ``grader`` is a SkippedOtter until the notebook makes its own. ``pause_gc``: the cyclic
    garbage collector stays off until ``resume_gc`` (the grader pauses it for the notebook's
    set-up cells, before its first answer cell)."""
    from IPython import get_ipython

    shell = get_ipython()
    seed_everything(seed)
    shell.events.register("pre_run_cell", lambda *_: seed_everything(seed))
    shell.user_ns.setdefault("grader", SkippedOtter())
    if pause_gc:
        # ``import torch`` allocates ~10^6 objects; the collections they trigger cost ~0.3 CPU-s
        # of every grading (a tenth of the kernel's work), and find almost nothing to free.
        gc.disable()


def resume_gc() -> None:
    """After the set-up cells: what they built (modules, mostly) is frozen, out of every later
    collection's way, and collection resumes as usual for the answers."""
    gc.freeze()
    gc.enable()


def _where_defined(name: str) -> str:
    return (
        f"your notebook defines no `{name}` when it is graded. Did you rename or delete it, define "
        "it only in a demo cell (demo cells are not run by the grader), or leave an error in the "
        "cell that defines it?"
    )


def harvest(check: str, namespace: dict[str, Any], out_path: str, uses: bool = True) -> None:
    """Run hidden check ``check``'s first step on the student's functions; save the arrays.

    ``uses=False`` skips the checks ``check`` uses (they are re-run only to blame them when
    ``check`` fails; the grader then takes their outputs from their own harvests)."""
    import hidden_checks

    fn = hidden_checks.CHECKS[check]
    names = list(inspect.signature(fn).parameters)
    missing = [n for n in names if n not in namespace]
    if missing:
        outputs = {"__error__": np.array(" ".join(_where_defined(n) for n in missing))}
    else:
        try:
            outputs = fn(*[namespace[n] for n in names], uses=uses)
        except Exception as err:
            outputs = {
                "__error__": np.array(f"checking your code raised {type(err).__name__}: {err}")
            }
    np.savez(out_path, **outputs)
