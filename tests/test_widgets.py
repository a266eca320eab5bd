"""The guided cells' and demos' support code, without a browser (tests/test_browser.py has one)."""

from __future__ import annotations

import re

import pytest
from offline_rl import widgets
from offline_rl.algorithms.coverage import coverage_counts
from offline_rl.algorithms.tabular import offline_q_learning


@pytest.mark.parametrize(
    "fn",
    [lambda: None, lambda: {"bc_loss": None}, lambda: [1.0, (None, 2.0)], lambda: 1 / 0],
    ids=["None", "dict-with-None", "nested-None", "raises"],
)
def test_wait_for_prints_one_waiting_line_instead_of_failing(fn, capsys):
    assert widgets.wait_for("q7", fn) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("waiting for your code (q7): "), lines


def test_wait_for_returns_the_result_once_the_code_is_written(capsys):
    assert widgets.wait_for("q7", lambda a, b=0: {"x": a + b}, 1, b=2) == {"x": 3}
    assert capsys.readouterr().out == ""


def test_demo_caption_follows_the_slider_and_names_the_missing_question():
    box = widgets.cql_demo(offline_q_fn=offline_q_learning, coverage_fn=coverage_counts)
    slider, caption = box.children[0], box.children[1]
    assert caption.value.startswith("α = 0:"), caption.value
    slider.value = 1.0
    assert caption.value.startswith("α = 1:"), caption.value
    waiting = widgets.cql_demo(offline_q_fn=lambda *a, **k: None, coverage_fn=coverage_counts)
    assert waiting.children[1].value == "waiting for your code (q3)"


def _unpacks_student_result():
    """What CartPole's guided cell does with a student stub: unpack its result (None)."""
    loss, info = (lambda: None)()  # TypeError: cannot unpack non-iterable NoneType object
    return loss, info


def _argmax_of_student_q():
    """What policy selection does with a stub's Q-table: argmax over axis 1 of None."""
    import numpy as np

    return np.argmax(np.asarray(None), axis=1)  # AxisError: axis 1 is out of bounds


@pytest.mark.parametrize("support", [_unpacks_student_result, _argmax_of_student_q])
def test_waiting_line_names_the_question_and_no_support_code_exception(support, capsys):
    assert widgets.wait_for("q4, q5", support) is None
    out = capsys.readouterr().out
    assert not re.search(r"Error|Exception|unpack|axis|NoneType", out), out
    assert out == f"waiting for your code (q4, q5): {widgets.WAITING_ADVICE}\n", out


def test_demo_waiting_note_shows_no_exception_of_the_student_stub(monkeypatch):
    def raises(*args, **kwargs):
        raise TypeError("cannot unpack non-iterable NoneType object")

    notes: list[str] = []  # what the demo's output area prints (outside a kernel it shows nothing)
    monkeypatch.setattr(widgets, "_note", lambda output, message: notes.append(message))
    box = widgets.cql_demo(offline_q_fn=raises, coverage_fn=coverage_counts)
    assert box.children[1].value == "waiting for your code (q3)", box.children[1].value
    assert notes == ["waiting for your code (q3)"], notes
