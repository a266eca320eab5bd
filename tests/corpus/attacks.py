"""Tampering attacks, each a code cell a student could add to a notebook.

Every attack tries to gain points it did not earn or to show hidden expected values. The tests run
them through plain ``otter run`` (where they work) and through the sandboxed grader (where they
must gain nothing).
"""

from __future__ import annotations

#: Patch otter's test runner so that every test case passes.
MONKEYPATCH_OTTER = """
from otter.test_files import abstract_test as _at, exception_test as _et

def _always_pass(self, global_environment):
    self.test_case_results = [
        _at.TestCaseResult(test_case=tc, message="passed", passed=True) for tc in self.test_cases
    ]

_et.ExceptionTestFile.run = _always_pass
"""

#: Redefine the grader: otter's Checker (which collects every test result) marks all as passed.
REDEFINE_GRADER = """
from otter.execute import Checker as _Checker
from otter.test_files import abstract_test as _at

_original_check = _Checker.check.__func__

def _check(cls, *args, **kwargs):
    test_file = _original_check(cls, *args, **kwargs)
    test_file.test_case_results = [
        _at.TestCaseResult(test_case=tc, message="passed", passed=True)
        for tc in test_file.test_cases
    ]
    return test_file

_Checker.check = classmethod(_check)
grader = None  # and the notebook's own grader object is gone
"""

#: Make every numerical comparison succeed (numpy and torch).
MONKEYPATCH_NUMPY_TORCH = """
import numpy as _np, torch as _torch
_np.allclose = lambda *a, **k: True
_np.isclose = lambda *a, **k: True
_np.array_equal = lambda *a, **k: True
_torch.allclose = lambda *a, **k: True
"""

#: Replace the hidden-check module through builtins.__import__ and sys.modules.
MONKEYPATCH_BUILTINS = """
import builtins as _b, sys as _sys, types as _types
_fake = _types.ModuleType("hidden_checks")
_fake.check = lambda *a, **k: None
_fake.compare = lambda *a, **k: None
_sys.modules["hidden_checks"] = _fake
_real_import = _b.__import__
_b.__import__ = lambda name, *a, **k: (
    _fake if name == "hidden_checks" else _real_import(name, *a, **k)
)
"""

#: Overwrite every test file and hidden-check module the kernel can reach with passing ones.
REWRITE_TESTS = """
import glob as _glob, os as _os, re as _re
_roots = [".", "..", "/autograder/source", "/autograder/source/files"]
for _root in _roots:
    for _path in _glob.glob(_os.path.join(_root, "tests", "*.py")):
        try:
            _head = open(_path).read().split("@test_case")[0]
            _name = _re.search(r'name = "(.*)"', _head).group(1)
            _pts = _re.search(r"points = (.*)", _head).group(1)
            _os.remove(_path)
            with open(_path, "w") as _f:
                _f.write("from otter.test_files import test_case\\nOK_FORMAT = False\\n"
                         f"name = {_name!r}\\npoints = {_pts}\\n"
                         "@test_case(points=None, hidden=False)\\ndef test_ok():\\n    pass\\n")
        except Exception:
            pass
    for _path in _glob.glob(_os.path.join(_root, "hidden_checks.py")):
        try:
            _os.remove(_path)
            with open(_path, "w") as _f:
                _f.write("CHECKS = {}\\ndef check(*a, **k):\\n    pass\\n"
                         "def compare(*a, **k):\\n    pass\\n")
        except Exception:
            pass
"""

#: Find the expected values, print them, and use them to answer q10-q12 without knowing why.
READ_EXPECTED = """
import glob as _glob, numpy as _np
_found = None
for _pattern in ["*expected*.npz", "*fixtures*.npz", "**/*expected*.npz", "/autograder/**/*.npz",
                 "/tmp/**/*expected*.npz"]:
    for _path in _glob.glob(_pattern, recursive=True):
        try:
            _found = dict(_np.load(_path))
            break
        except Exception:
            pass
    if _found:
        break
if _found:
    print("LEAKED", {k: v.tolist() for k, v in _found.items() if k.startswith("q1")})
    q10_answer = "abcd"[int(_found["q10/expected_answer"])]
    q11_answer = "abcd"[int(_found["q11/expected_answer"])]
    q12_answer = float(_found["q12/expected_answer"])
"""

#: Answer cells for q10-q12 come after the attack cell; the leak attack must run after them.
ANSWER_ANCHOR = "q12_answer = "

ATTACKS = {
    "monkeypatch_otter": MONKEYPATCH_OTTER,
    "redefine_grader": REDEFINE_GRADER,
    "monkeypatch_numpy_torch": MONKEYPATCH_NUMPY_TORCH,
    "monkeypatch_builtins": MONKEYPATCH_BUILTINS,
    "rewrite_tests_and_fixtures": REWRITE_TESTS,
    "read_and_print_expected": READ_EXPECTED,
}
