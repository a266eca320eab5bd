"""The guided cells' and demos' support code, without a browser (tests/test_browser.py has one)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import ipywidgets
import numpy as np
import pytest
from offline_rl import widgets
from offline_rl.algorithms.coverage import coverage_counts
from offline_rl.algorithms.tabular import offline_q_learning

T = TypeVar("T")


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


def _control_and_caption(box):
    """The demo's slider and its caption (the HTML widget with the demo-state class)."""
    control = next(c for c in box.children if hasattr(c, "options") or hasattr(c, "min"))
    caption = next(c for c in box.children if "offline-rl-demo-state" in c._dom_classes)
    return control, caption


def test_demo_caption_follows_the_slider_and_names_the_missing_question():
    box = widgets.cql_demo(offline_q_fn=offline_q_learning, coverage_fn=coverage_counts)
    slider, caption = _control_and_caption(box)
    assert caption.value.startswith("α = 0:"), caption.value
    slider.value = 1.0
    assert caption.value.startswith("α = 1:"), caption.value
    waiting = widgets.cql_demo(offline_q_fn=lambda *a, **k: None, coverage_fn=coverage_counts)
    assert _control_and_caption(waiting)[1].value == "waiting for your code (q3)"


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
    caption = _control_and_caption(box)[1]
    assert caption.value == "waiting for your code (q3)", caption.value
    assert notes == ["waiting for your code (q3)"], notes


# ------------------------------------------------------------------ what the demos show (issue 25)
def test_every_demo_says_what_to_look_for_above_its_control():
    box = widgets.cql_demo(offline_q_fn=offline_q_learning, coverage_fn=coverage_counts)
    sentence, control = box.children[0], box.children[1]
    assert "What to look for" in sentence.value and len(sentence.value) > 60, sentence.value
    assert hasattr(control, "value"), "the sentence must come before (above) the slider"


@pytest.mark.slow  # 48 trainings of 5,000 iterations: ~10 s quiet
def test_demo2_noise_shows_some_lava_moves_and_luck_decides_the_rest():
    """Demo 2's sentence, over 8 dataset seeds: at every ε of the slider (noise on all 20
    episodes) fewer lava moves stay unseen, and the seen ones learn about their true -100;
    with ε <= 0.2 the greedy policy fails on every seed; with more, some seeds reach the goal
    and some do not; on the demo's data (seed 0) it fails at every ε."""
    from offline_rl.behavior import narrow_expert_dataset
    from offline_rl.envs import get_layout
    from offline_rl.planning import greedy_policy, rollout_return, value_iteration

    lay = get_layout("cliff")
    q_true = value_iteration(lay)[1]
    lava = q_true <= -99  # (S, A): moves into the lava
    failed: dict[float, list[bool]] = {}
    for seed in range(8):
        unseen_lava = {}
        for epsilon in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
            data = narrow_expert_dataset("cliff", n_episodes=20, epsilon=epsilon, seed=seed)
            counts = coverage_counts(data, lay.n_states, lay.n_actions)
            q = offline_q_learning(data, lay.n_states, lay.n_actions, lay.gamma, alpha=0.0)
            seen, unseen = widgets._seen_unseen(counts)
            unseen_lava[epsilon] = int((unseen & lava).sum())
            error = abs(q[seen & lava] - q_true[seen & lava]).max(initial=0)
            assert error < 5, f"seed {seed}, ε {epsilon}: a seen lava move is off by {error}"
            ret = rollout_return(lay, greedy_policy(q))
            failed.setdefault(epsilon, []).append(ret <= -lay.horizon * lay.step_cost)
        assert all(unseen_lava[e] < unseen_lava[0.0] for e in unseen_lava if e > 0), unseen_lava
    assert all(all(failed[e]) for e in (0.0, 0.1, 0.2)), failed
    assert all(any(failed[e]) and not all(failed[e]) for e in (0.3, 0.4, 0.5)), failed
    assert all(runs[0] for runs in failed.values()), f"seed 0 (the demo's): {failed}"


def test_one_colour_per_method_in_demo4_and_the_learning_curves():
    import matplotlib.pyplot as plt
    from offline_rl import plotting
    from offline_rl.algorithms.experiments import quality_experiment

    def first_word(colours):
        return {name.split()[0]: colour for name, colour in colours.items()}

    box = widgets.quality_demo(quality_experiment_fn=quality_experiment,
                               coverage_fn=coverage_counts, seeds=(0,))  # fmt: skip
    caption = _control_and_caption(box)[1].value
    assert "colours: " in caption, caption
    demo4 = dict(part.rsplit(" ", 1) for part in caption.split("colours: ")[1].split(", "))
    plt.close("all")
    widgets.quality_learning_curves(offline_q_learning, coverage_counts, seeds=(0,),
                                    n_iters=(10, 30))  # fmt: skip
    curves = plotting.legend_colours(plt.gcf().axes[0])
    plt.close("all")
    assert set(first_word(demo4)) == {"BC", "naive", "CQL"}, demo4
    assert first_word(curves) == first_word(demo4), f"Demo 4 {demo4}, learning curves {curves}"
    assert len(set(demo4.values())) == 3, demo4


def test_every_colour_bar_has_a_label():
    import matplotlib.pyplot as plt
    from offline_rl import plotting

    fig, axes = plt.subplots(1, 2)
    plotting.draw_grid(axes[0], "open", counts=np.ones(36))
    plotting.draw_grid(axes[1], "open", values=np.zeros(36))
    bars = [ax for ax in fig.axes if ax not in axes]
    assert len(bars) == 2 and all(bar.get_ylabel() for bar in bars), [b.get_ylabel() for b in bars]
    plt.close(fig)


def test_demo1_says_1_episode_not_1_episodes():
    box = widgets.online_vs_offline_demo(coverage_fn=coverage_counts)
    slider, caption = _control_and_caption(box)
    slider.value = 1
    assert caption.value.startswith("seed 0, 1 episode:"), caption.value
    slider.value = 2
    assert caption.value.startswith("seed 0, 2 episodes:"), caption.value


def test_stacked_unseen_pairs_are_counted_on_the_scatter():
    import matplotlib.pyplot as plt
    from offline_rl import plotting

    q = np.zeros((2, 4))
    counts = np.array([[1, 0, 0, 0], [0, 0, 0, 0]])
    q_true = np.array([[-1.0, -100, -100, -100], [0, 0, 0, 0]])
    fig, ax = plt.subplots()
    plotting.plot_q_seen_vs_unseen(ax, q, counts, q_true)
    notes = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert notes == ["3 pairs"], notes


def test_wait_for_says_when_the_students_own_code_raised(capsys):
    # The student's function, compiled as ipykernel compiles a notebook cell, with a NameError.
    cell: dict = {}
    source = "def coverage_counts(*args):\n    return count_pairs(args)\n"
    exec(compile(source, "/tmp/ipykernel_4242/123456.py", "exec"), cell)
    assert widgets.wait_for("q1", cell["coverage_counts"]) is None
    out = capsys.readouterr().out
    assert out.startswith(
        "waiting for your code (q1): your q1 code raised an error: run its grader.check cell"
    ), out
    assert "NameError" not in out and "Traceback" not in out, out
    # A stub's None reaching code in a cell is still "waiting", not the student's error.
    source = "def stub_user(*args):\n    return None[0]\n"
    exec(compile(source, "/tmp/ipykernel_4242/654321.py", "exec"), cell)
    assert widgets.wait_for("q1", cell["stub_user"]) is None
    assert capsys.readouterr().out == f"waiting for your code (q1): {widgets.WAITING_ADVICE}\n"


# ------------------------------------------------- speed, with the same results (issue 24)
class _Handle:
    """What ``display(..., display_id=True)`` returns in a kernel: records its updates."""

    def __init__(self, shown: object) -> None:
        self.shown = [shown]

    def update(self, obj: object) -> None:
        self.shown.append(obj)


def _as_in_a_notebook(monkeypatch):
    """Make the demos behave as in a kernel; returns the display handles they create."""
    handles: list[_Handle] = []

    def display(obj, display_id=False):
        handles.append(_Handle(obj))
        return handles[-1] if display_id else None

    monkeypatch.setattr(widgets, "_in_notebook", lambda: True)
    monkeypatch.setattr(widgets, "display", display)
    return handles


def test_demo4_shows_its_curves_filling_in_one_quality_at_a_time(monkeypatch):
    """The first figure comes before any call of the student's experiment (the data's grid,
    empty curves), then one after each call; it says how far it is, and the finished curves are
    the experiment's on all qualities at once."""
    from offline_rl.algorithms.experiments import quality_experiment

    handles = _as_in_a_notebook(monkeypatch)
    calls: list[list[float]] = []

    def student(qualities, seeds, **kwargs):
        calls.append(list(qualities))
        return quality_experiment(qualities, seeds, **kwargs)

    shown: list[tuple[int, str, list[np.ndarray]]] = []  # (calls so far, caption, curves)
    render = widgets._render

    stale: list[int] = []  # frames whose pixels are not the figure's (a panel copied stale)

    def spy(fig):
        curves = [np.asarray(line.get_ydata(), dtype=float) for line in fig.axes[0].lines[:3]]
        frame = render(fig)
        shown.append((len(calls), frame.caption, curves))
        fig.canvas.draw()  # the whole figure, drawn anew
        if not np.array_equal(_png_pixels(frame.png), np.asarray(fig.canvas.buffer_rgba())):
            stale.append(len(calls))
        return frame

    monkeypatch.setattr(widgets, "_render", spy)
    box = widgets.quality_demo(quality_experiment_fn=student, coverage_fn=coverage_counts,
                               seeds=(0, 1))  # fmt: skip
    qualities = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert calls == [[q] for q in qualities], calls
    # Shown at once (before any figure), then one figure per quality, the last one finished.
    assert handles[0].shown[0] is box, "the demo is not displayed while its curves fill in"
    # The first figure before any quality (the data's grid, empty curves), then one per quality.
    assert [n for n, _, _ in shown] == [0, 1, 2, 3, 4, 5], [n for n, _, _ in shown]
    assert not stale, f"the frames after {stale} qualities show other curves than the figure's"
    for n, caption, curves in shown[:-1]:
        assert "the curves so far" in caption, caption  # the count: the progress line's
        assert all(np.isnan(c[n:]).all() and not np.isnan(c[:n]).any() for c in curves), curves
    final_caption, final = shown[-1][1], shown[-1][2]
    assert "so far" not in final_caption and "quality 0.50" in final_caption, final_caption
    expected = quality_experiment(qualities, [0, 1])
    for curve, key in zip(final, ("bc", "naive", "cql"), strict=True):
        np.testing.assert_array_equal(curve, expected[key])
    # The progress line is gone, and so is the early display: the cell's value shows the demo.
    progress = box.children[2]
    assert progress.layout.display == "none" and progress.value == "", progress.value
    assert handles[0].shown[-1] is not box and handles[0].shown[-1].value == "", handles[0].shown


def test_demo4_stops_at_the_first_quality_the_students_code_fails_on(monkeypatch):
    _as_in_a_notebook(monkeypatch)
    calls = []

    def half_written(qualities, seeds, **kwargs):
        calls.append(qualities)
        if qualities[0] > 0.3:
            return None
        return {"bc": [0.0], "naive": [0.0], "cql": [0.0]}

    box = widgets.quality_demo(quality_experiment_fn=half_written, coverage_fn=coverage_counts)
    caption = _control_and_caption(box)[1]
    assert caption.value == "waiting for your code (q8)", caption.value
    assert calls == [[0.0], [0.25], [0.5]], "the failing quality was run again (or others after)"


def test_a_move_back_to_a_value_renders_nothing_again(monkeypatch):
    calls, renders = [], []

    def student(*args, **kwargs):
        calls.append(kwargs["alpha"])
        return offline_q_learning(*args, **kwargs)

    render = widgets._render
    monkeypatch.setattr(widgets, "_render", lambda fig: renders.append(1) or render(fig))
    box = widgets.cql_demo(offline_q_fn=student, coverage_fn=coverage_counts)
    slider, caption = _control_and_caption(box)
    first = caption.value
    slider.value = 1.0
    slider.value = 0.0
    assert caption.value == first
    assert calls == [0.0, 1.0] and len(renders) == 2, (calls, renders)


def test_a_move_outside_a_kernel_draws_at_once_under_a_running_event_loop():
    """The suite caught it: after the browser tests, Playwright's event loop ran in the test
    process, the demos took it for a kernel's and deferred every move."""
    calls = []

    def student(*args, **kwargs):
        calls.append(kwargs["alpha"])
        return offline_q_learning(*args, **kwargs)

    async def move() -> None:
        box = widgets.cql_demo(offline_q_fn=student, coverage_fn=coverage_counts)
        slider, _ = _control_and_caption(box)
        slider.value = 1.0
        assert calls == [0.0, 1.0], calls

    _run_in_a_fresh_event_loop(move)


def _run_in_a_fresh_event_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())`` in a thread of its own: after the browser tests Playwright's loop
    may run in this worker's main thread, where asyncio.run refuses to start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


def test_a_demo_figure_is_drawn_once(monkeypatch):
    """Rendering a demo's frame draws its figure once: no second pass for a layout engine
    (``Figure.tight_layout`` leaves one behind, and savefig then draws the figure twice)."""
    import matplotlib.figure

    draws: list[int] = []
    draw = matplotlib.figure.Figure.draw
    monkeypatch.setattr(matplotlib.figure.Figure, "draw",
                        lambda self, renderer: draws.append(1) or draw(self, renderer))  # fmt: skip
    widgets.distribution_shift_demo(offline_q_fn=offline_q_learning, coverage_fn=coverage_counts)
    assert len(draws) == 1, f"the first frame drew its figure {len(draws)} times"


def test_demo1_draws_the_sweeps_own_seed0_data_and_agents():
    """Demo 1's left panel takes seed 0's data and policy from the sweep: the same arrays a
    fresh collection of n episodes and a fresh replay give, at every slider value."""
    from offline_rl.behavior import random_policy
    from offline_rl.datasets import collect_dataset
    from offline_rl.envs import get_layout, make_grid_env
    from offline_rl.planning import greedy_policy

    lay = get_layout("open")
    _, first = widgets._coverage_sweep(coverage_counts, "open", widgets.DEMO1_SIZES, (0,))
    for i, n in enumerate(widgets.DEMO1_SIZES):
        fresh = collect_dataset(make_grid_env(lay), random_policy(), n, 0, progress=False)
        kept = widgets._first_episodes(first.stream, n)
        for key, value in fresh.as_dict().items():
            np.testing.assert_array_equal(kept.as_dict()[key], value, err_msg=f"{n}: {key}")
        policy = greedy_policy(widgets.replay_q_learning(fresh, lay, 60))
        np.testing.assert_array_equal(first.policies[i], policy, err_msg=f"{n} episodes")


@pytest.mark.parametrize(
    "message",
    ["waiting for your code (q3)",
     "waiting for your code (q1): your q1 code raised an error: run its grader.check cell "
     "to see it"],
)  # fmt: skip
def test_a_waiting_demo_says_waiting_once(message):
    """The caption says "waiting for your code (qN)"; the output area below it says only what to
    do (a student saw the same words twice in every demo of the untouched hand-out)."""
    output = ipywidgets.Output()
    widgets._note(output, message)
    text = "".join(o["text"] for o in output.outputs)
    assert "waiting for your code" not in text, text
    assert "re-run this cell" in text, text
    if "raised an error" in message:
        assert "Your q1 code raised an error: run its grader.check cell to see it." in text, text


# ------------------------------------------------- session 7's three demo bugs (issue 24)
def test_a_move_while_a_draw_is_in_flight_ends_on_the_sliders_last_value(monkeypatch):
    """Two quick key presses: the second move (16 episodes) arrives while the first one's figure
    (8) is drawn. The demo must end showing the slider's value, 16, not the figure it was
    drawing when the move came (session 7: Demo 1 showed 8 episodes with the slider at 16)."""
    box = widgets.online_vs_offline_demo(coverage_fn=coverage_counts)
    slider, caption = _control_and_caption(box)
    render = widgets._render
    drawn: list[str] = []

    def second_press_during_the_draw(fig):
        frame = render(fig)
        drawn.append(frame.caption.split(":")[0])
        if slider.value == 8:
            slider.value = 16  # the second key press, handled while 8 is being drawn
        return frame

    monkeypatch.setattr(widgets, "_render", second_press_during_the_draw)
    slider.value = 8
    assert slider.value == 16
    assert caption.value.startswith("seed 0, 16 episodes:"), (caption.value, drawn)
    assert drawn == ["seed 0, 8 episodes", "seed 0, 16 episodes"], drawn  # each drawn once


def test_quick_moves_draw_only_the_last_value_in_a_kernel(monkeypatch):
    """In a kernel (an event loop runs) moves that arrive together are drawn once, for the last
    value: two key presses in a row cost one figure, not two."""
    monkeypatch.setattr(widgets, "_in_notebook", lambda: True)  # as in a kernel
    renders: list[str] = []
    render = widgets._render
    monkeypatch.setattr(
        widgets, "_render", lambda fig: renders.append(fig.axes[0].get_title()) or render(fig)
    )

    async def presses() -> str:
        box = widgets.cql_demo(offline_q_fn=offline_q_learning, coverage_fn=coverage_counts)
        slider, caption = _control_and_caption(box)
        for value in (0.01, 0.1, 1.0):  # three presses, each handled before any draw runs
            slider.value = value
        while len(renders) < 2 or not caption.value.startswith("α = 1:"):
            await asyncio.sleep(0.02)
            if len(renders) > 4:
                break
        await asyncio.sleep(0.2)  # any further (stale) draw would come now
        return caption.value

    caption = _run_in_a_fresh_event_loop(presses)
    assert caption.startswith("α = 1:"), caption
    assert [title.split(":")[0] for title in renders] == ["α = 0", "α = 1"], renders


def test_demo4_says_how_far_it_is_once_while_its_curves_fill_in(monkeypatch):
    """While Demo 4 fills in, "n of 5 qualities" is said once: in the progress line above the
    figure, not again in the figure's title (the caption), 0.5 s apart (session 7)."""
    created: list[ipywidgets.HTML] = []

    class RecordedHTML(ipywidgets.HTML):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    _as_in_a_notebook(monkeypatch)
    monkeypatch.setattr(ipywidgets, "HTML", RecordedHTML)
    texts: list[str] = []
    render = widgets._render

    def spy(fig):
        frame = render(fig)
        texts.append(" | ".join([w.value for w in created] + [frame.caption]))
        return frame

    monkeypatch.setattr(widgets, "_render", spy)

    def student(qualities, seeds, **kwargs):
        return {"bc": [0.0], "naive": [0.0], "cql": [0.0]}

    widgets.quality_demo(quality_experiment_fn=student, coverage_fn=coverage_counts)
    assert len(texts) == 6, texts
    for n, text in enumerate(texts[:-1]):
        assert text.count("of 5 qualities") == 1, f"after {n} qualities the page says: {text}"
        assert f"{n} of 5 qualities" in text, text
    assert "of 5 qualities" not in texts[-1], texts[-1]


def test_captions_name_colours_in_words_not_hex_codes():
    """A caption is read by people (screen readers): "BC blue", not "BC #1f77b4"."""
    import matplotlib.pyplot as plt
    from offline_rl import plotting

    fig, ax = plt.subplots()
    plotting.plot_curves(ax, [0, 1], {"BC": [0, 1], "naive Q": [1, 0], "CQL": [1, 1],
                                      "online from zeros": [0, 0]})  # fmt: skip
    ax.axhline(0.5, color="k", ls="--", label="learned = true")
    ax.legend()
    caption = widgets._describe(fig)
    plt.close(fig)
    assert not re.search(r"#[0-9a-fA-F]{6}", caption), caption
    assert caption.endswith(
        "colours: BC blue, naive Q orange, CQL green, online from zeros purple, "
        "learned = true black"
    ), caption


def test_replay_q_learning_is_the_textbook_update():
    """The replay keeps each row's max instead of taking it per update: same numbers as the
    plain update ``Q(s,a) += lr (r + γ max Q(s') - Q(s,a))`` applied in order."""
    from offline_rl.behavior import narrow_expert_dataset, random_policy
    from offline_rl.datasets import collect_dataset
    from offline_rl.envs import get_layout, make_grid_env

    cases = [(narrow_expert_dataset("cliff", 20, eps, seed), "cliff")
             for eps, seed in ((0.3, 0), (0.5, 1))]  # fmt: skip
    env = make_grid_env(get_layout("open"))
    cases += [(collect_dataset(env, random_policy(), 16, seed, progress=False), "open")
              for seed in (0, 1, 2)]  # fmt: skip
    for data, name in cases:
        lay = get_layout(name)
        q = np.zeros((lay.n_states, lay.n_actions))
        for _ in range(30):
            steps = zip(data.observations, data.actions, data.rewards,
                        data.next_observations, data.terminals, strict=True)  # fmt: skip
            for s, a, r, s2, done in steps:
                target = float(r) + (0.0 if done else lay.gamma * q[s2].max())
                q[s, a] += 0.5 * (target - q[s, a])
        np.testing.assert_allclose(widgets.replay_q_learning(data, lay, 30), q, rtol=0, atol=1e-12)


def test_a_demo_laid_out_once_keeps_every_label_on_the_canvas(monkeypatch):
    """The layout is measured on a demo's first figure and reused (``plotting.FixedLayout``):
    at every other slider value every title, label and colour bar must still lie inside the
    figure (Demo 1 and 4's tick labels change width the most between values)."""
    from offline_rl.algorithms.experiments import quality_experiment

    outside: list[str] = []
    render = widgets._render

    def check(fig):
        width, height = fig.get_size_inches()
        box = fig.get_tightbbox(fig.canvas.get_renderer())
        if box.x0 < -0.01 or box.y0 < -0.01 or box.x1 > width + 0.01 or box.y1 > height + 0.01:
            outside.append(f"{fig.axes[0].get_title()!r}: {box} outside {width} x {height}")
        return render(fig)

    monkeypatch.setattr(widgets, "_render", check)
    demos = [widgets.online_vs_offline_demo(coverage_fn=coverage_counts),
             widgets.quality_demo(quality_experiment, coverage_counts, seeds=(0,))]  # fmt: skip
    for box in demos:
        slider = _control_and_caption(box)[0]
        for value in slider.options:
            slider.value = value
    assert not outside, outside


# ----------------------------------------- moves that redraw in place (issue 24, session 10)
def _png_pixels(png: bytes) -> np.ndarray:
    import io

    import PIL.Image

    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGBA"))


def _started_at(monkeypatch, value):
    """Make the next demo's slider start at ``value`` (the demos fix their starting value)."""
    for name in ("SelectionSlider", "FloatSlider"):
        cls = getattr(ipywidgets, name)

        def make(*args, cls=cls, **kwargs):
            kwargs["value"] = value
            return cls(*args, **kwargs)

        monkeypatch.setattr(ipywidgets, name, make)


def _demos():
    from offline_rl.algorithms.experiments import quality_experiment

    return {
        "1": (lambda: widgets.online_vs_offline_demo(coverage_fn=coverage_counts), (2, 64)),
        "2": (lambda: widgets.distribution_shift_demo(offline_q_learning, coverage_counts),
              (0.3, 0.5)),
        "3": (lambda: widgets.cql_demo(offline_q_learning, coverage_counts), (0.01, 100.0)),
        "4": (lambda: widgets.quality_demo(quality_experiment, coverage_counts, seeds=(0,)),
              (0.0, 1.0)),
    }  # fmt: skip


@pytest.mark.parametrize("demo", ["1", "2", "3", "4", "4 in a kernel"])
def test_a_move_shows_the_picture_a_new_figure_of_that_value_shows(demo, monkeypatch):
    """Each demo keeps one figure and changes its artists on a move (and redraws only the axes
    that change, Demos 1 and 4). The frame a move ends on must be, pixel for pixel, the figure
    the demo draws when it starts at that value (laid out alike): nothing of the old value
    left (a title, a count, an arrow, a bar label, the axes' limits, Demo 4's curves as they
    were while they filled in, in a kernel), nothing missing."""
    if demo.endswith("in a kernel"):
        _as_in_a_notebook(monkeypatch)  # Demo 4 draws its curves filling in first
    make, values = _demos()[demo.split()[0]]
    frames: list[tuple[object, object]] = []
    render = widgets._render
    monkeypatch.setattr(widgets, "_render",
                        lambda fig: frames.append((fig, render(fig))) or frames[-1][1])  # fmt: skip
    slider = _control_and_caption(make())[0]
    for value in values:
        # In a thread of its own: after the browser tests Playwright's loop may run in this
        # worker's main thread, and a kernel's demo would defer the draw to it (MOVE_SETTLE_S).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(setattr, slider, "value", value).result()
        moved_fig, moved = frames[-1]
        with monkeypatch.context() as patch:
            _started_at(patch, value)
            _control_and_caption(make())
        fresh_fig, fresh = frames[-1]
        assert fresh_fig is not moved_fig
        assert fresh.caption == moved.caption
        # The same margins as the moved figure (each demo lays out its first figure).
        keys = ("left", "right", "bottom", "top", "wspace", "hspace")
        fresh_fig.subplots_adjust(**{k: getattr(moved_fig.subplotpars, k) for k in keys})
        fresh_fig.canvas.draw()
        new = np.asarray(fresh_fig.canvas.buffer_rgba())
        old = _png_pixels(moved.png)
        differ = int((np.abs(new.astype(int) - old).max(axis=2) > 0).sum())
        assert differ == 0, f"demo {demo} at {value}: {differ} pixels differ from a new figure"


def test_a_demo1_move_redraws_only_the_panels_it_changes(monkeypatch):
    """Demo 1's middle and right panels (their tick labels were most of a move's draw) are the
    same at every slider value: a move draws seed 0's grid, its colour bar and the circle, and
    copies the rest's pixels."""
    from matplotlib.axes import Axes

    box = widgets.online_vs_offline_demo(coverage_fn=coverage_counts)
    slider = _control_and_caption(box)[0]
    drawn: list[str] = []
    draw = Axes.draw

    def spy(self, renderer):
        drawn.append(self.get_title() or self.get_ylabel() or "an axes without labels")
        return draw(self, renderer)

    monkeypatch.setattr(Axes, "draw", spy)
    slider.value = 16
    assert "more coverage, better offline agent" not in drawn, drawn
    assert "the online agent collects its own data" not in drawn, drawn
    assert drawn and drawn[0].startswith("seed 0, 16 episodes:"), drawn
    assert len(drawn) == 3, drawn  # the grid, its colour bar, the circle's overlay


def test_demo_captions_read_as_sentences():
    """Session 9's nits: Demo 1 named purple twice (the online agent, in two panels), Demo 3
    ended on a bare "mean learned Q" that said nothing about the state."""
    from offline_rl.envs import get_layout

    caption = _control_and_caption(widgets.online_vs_offline_demo(coverage_fn=coverage_counts))[1]
    assert caption.value.count("purple") == 1, caption.value
    box = widgets.cql_demo(offline_q_fn=offline_q_learning, coverage_fn=coverage_counts)
    slider, caption = _control_and_caption(box)
    lay = get_layout("cliff")
    data = widgets._cliff_data(0.0)
    counts = coverage_counts(data, lay.n_states, lay.n_actions)
    seen, unseen = widgets._seen_unseen(counts)
    for alpha in (0.0, 1.0):
        slider.value = alpha
        q = offline_q_learning(data, lay.n_states, lay.n_actions, lay.gamma, alpha=alpha)
        state = f"mean learned Q: unseen {q[unseen].mean():.3g}, seen {q[seen].mean():.3g}"
        assert caption.value.endswith(" · " + state), caption.value


def test_a_grid_updated_in_place_shows_the_new_heat_numbers_arrows_and_title():
    """What plotting.GridPlot shows after an update, read back from its artists: the heatmap's
    cells and colour range (the colour bar's too) are the new counts', each live cell's number
    is its count, each arrow points the policy's way, and the title is the new one."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrow
    from offline_rl import plotting
    from offline_rl.envs import ACTION_DELTAS, get_layout

    lay = get_layout("cliff")
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2)
    heat = plotting.GridPlot(axes[0], lay, heat="counts")
    arrows = plotting.GridPlot(axes[1], lay, policy=True)
    for step in range(2):
        counts = rng.integers(0, 9 + 10 * step, size=(lay.n_states, lay.n_actions))
        policy = rng.integers(0, lay.n_actions, size=lay.n_states)
        heat.update(counts, title=f"step {step}")
        arrows.update(policy=policy)
        per_state = counts.sum(axis=1)
        np.testing.assert_array_equal(heat.image.get_array(), per_state.reshape(lay.rows, -1))
        assert heat.image.get_clim() == (per_state.min(), per_state.max())
        assert heat.colorbar.ax.get_ylim() == (per_state.min(), per_state.max())
        assert axes[0].get_title() == f"step {step}"
        assert heat.numbers and all(t.get_text() == str(per_state[s]) for s, t in heat.numbers)
        assert len(arrows.arrows) == lay.n_states - len(lay.walls) - len(lay.goals) - len(lay.pits)
        for s, arrow in arrows.arrows:  # each as a new arrow the policy's way would be
            r, c = lay.coords(s)
            dr, dc = ACTION_DELTAS[int(policy[s])]
            new = FancyArrow(c - 0.25 * dc, r - 0.25 * dr, 0.4 * dc, 0.4 * dr, head_width=0.15,
                             length_includes_head=True)  # fmt: skip
            np.testing.assert_allclose(arrow.get_xy(), new.get_xy(), err_msg=f"state {s}")
    plt.close(fig)


def test_bars_and_scatter_updated_in_place_show_the_new_values():
    """plotting.BarPlot and SeenUnseenPlot after updates, read back from their artists: each bar
    has the new height and a label with that value (below a negative bar), the scatter holds
    the new seen and unseen points, counts the stacked ones and its limits contain them all."""
    import matplotlib.pyplot as plt
    from offline_rl import plotting

    fig, axes = plt.subplots(1, 2)
    bars = plotting.BarPlot(axes[0], ["seen (s, a)", "unseen (s, a)"])
    scatter = plotting.SeenUnseenPlot(axes[1], with_truth=True)
    rng = np.random.default_rng(1)
    for values in ({"seen (s, a)": 3.6562, "unseen (s, a)": 0.0},
                   {"seen (s, a)": 3.61, "unseen (s, a)": -4.6122}):  # fmt: skip
        bars.update(values)
        assert [b.get_height() for b in bars.bars] == list(values.values())
        assert [t.get_text() for t in bars.labels] == [f"{v:.4g}" for v in values.values()]
        for label, value in zip(bars.labels, values.values(), strict=True):
            assert label.xy[1] == value, "a label sits at its bar's end"
            assert label.get_va() == ("top" if value < 0 else "bottom"), "beyond the end"
        low, high = axes[0].get_ylim()
        assert low <= min(0, *values.values()) and high >= max(values.values())
        counts = rng.integers(0, 2, size=(6, 4))
        q, q_true = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
        q[counts == 0], q_true[counts == 0] = 0.0, -100.0  # stacked unseen pairs
        scatter.update(q, counts, q_true)
        visited = (counts.sum(axis=1, keepdims=True) > 0) & np.ones(counts.shape, dtype=bool)
        seen, unseen = visited & (counts > 0), visited & (counts == 0)
        np.testing.assert_array_equal(scatter.seen.get_offsets(),
                                      np.column_stack([q_true[seen], q[seen]]))  # fmt: skip
        np.testing.assert_array_equal(scatter.unseen.get_offsets(),
                                      np.column_stack([q_true[unseen], q[unseen]]))  # fmt: skip
        assert [t.get_text() for t in axes[1].texts] == [f"{unseen.sum()} pairs"]
        (x0, x1), (y0, y1) = axes[1].get_xlim(), axes[1].get_ylim()
        assert x0 <= q_true[visited].min() and x1 >= q_true[visited].max()
        assert y0 <= q[visited].min() and y1 >= q[visited].max()
    plt.close(fig)
