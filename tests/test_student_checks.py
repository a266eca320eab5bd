"""What the student's own ``grader.check`` shows, in a real kernel on the built student notebook.

* a format-only check (Q10, Q12) never says "passed": a passed one says the format is OK and
  that correctness is graded after submitting; a malformed answer still fails;
* ``grader.check_all()`` lists the questions in number order (q1 ... q12), not as strings sort.

The notebook's tests come from its otter metadata, as in JupyterLab; the release must be built
(``make release``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel
from offline_rl import checks

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "student_release" / "offline_rl"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    if not (STUDENT / "offline_rl.ipynb").exists():
        pytest.fail("no student notebook: run `make release` first")
    # A copy: grader.check writes .OTTER_LOG beside the notebook, never into the committed release.
    folder = tmp_path_factory.mktemp("student") / "offline_rl"
    shutil.copytree(STUDENT, folder)
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(folder))
    try:
        run(client, "import offline_rl\nimport otter\ngrader = otter.Notebook('offline_rl.ipynb')")
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run(client, code: str) -> dict[str, str]:
    """Execute ``code``; the text/html and text/plain it displays, and any error, joined."""
    reply = client.execute_interactive(code, timeout=120, output_hook=(seen := _Collector()))
    assert reply["content"]["status"] == "ok", seen.shown
    return seen.shown


class _Collector:
    def __init__(self) -> None:
        self.shown = {"text/html": "", "text/plain": "", "stream": ""}

    def __call__(self, msg: dict) -> None:
        content = msg["content"]
        if msg["msg_type"] in ("execute_result", "display_data"):
            for mime in ("text/html", "text/plain"):
                self.shown[mime] += content["data"].get(mime, "")
        elif msg["msg_type"] == "stream":
            self.shown["stream"] += content["text"]


@pytest.mark.parametrize(
    ("assignment", "question"),
    [
        ("q10_answer = 'c'", "q10_why_offline_q_fails"),
        ("q12_answer = 0.0", "q12_constant_q_penalty"),
    ],
)
def test_a_format_only_check_never_says_passed(kernel, assignment, question):
    shown = run(kernel, f"{assignment}\ngrader.check({question!r})")
    assert checks.FORMAT_ONLY in shown["text/html"], shown
    assert checks.FORMAT_ONLY in shown["text/plain"], shown
    assert not re.search("passed", shown["text/html"] + shown["text/plain"], re.I), shown


def test_a_malformed_answer_still_fails_its_format_check(kernel):
    shown = run(kernel, "q10_answer = 'e'\ngrader.check('q10_why_offline_q_fails')")
    assert "must be one of" in shown["text/html"], shown
    assert checks.FORMAT_ONLY not in shown["text/html"], shown


def test_a_check_that_judges_correctness_still_says_passed(kernel):
    # q6 judges the answer itself: otter's own "passed" is honest there, and stays.
    code = """
import numpy as np
def bcq_policy(q, counts, threshold):
    top = counts.max(axis=1, keepdims=True)
    ratio = np.divide(counts, top, out=np.ones(q.shape), where=top > 0)
    return np.argmax(np.where(ratio >= threshold, q, -np.inf), axis=1)
grader.check('q6_bcq')
"""
    shown = run(kernel, code)
    assert "passed" in shown["text/html"] and checks.FORMAT_ONLY not in shown["text/html"], shown


def test_check_all_lists_the_questions_in_number_order(kernel):
    text = run(kernel, "grader.check_all()")["text/plain"]
    listed = re.findall(r"^(q\d+)_\w+ results", text, re.M)
    numbers = [int(q[1:]) for q in listed]
    assert len(numbers) >= 10 and numbers == sorted(numbers), listed
