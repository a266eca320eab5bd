"""The guided cells' and demos' support code, without a browser (tests/test_browser.py has one)."""

from __future__ import annotations

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
