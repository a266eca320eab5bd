"""Labels inside the demos' figures stay readable (student review, session 10): Demo 2's
"N pairs" counts are not covered by the scatter's markers, and a grid's "S" does not overlap the
visit count or arrow in the start cell. Checked on the figures the demos draw, in display
coordinates (pixels), with the reference functions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from offline_rl import plotting, widgets
from offline_rl.algorithms.coverage import coverage_counts
from offline_rl.algorithms.tabular import offline_q_learning
from offline_rl.envs import get_layout


def _demo2_figure(noise: float):
    """The figure Demo 2 draws first (its slider at ``noise`` is drawn on the same figure)."""
    frames = []
    render = widgets._render
    widgets._render = lambda fig: frames.append(fig) or render(fig)
    try:
        box = widgets.distribution_shift_demo(offline_q_learning, coverage_counts)
        slider = next(c for c in box.children if hasattr(c, "options") or hasattr(c, "max"))
        slider.value = noise
    finally:
        widgets._render = render
    return frames[-1]


def test_demo2_pair_counts_are_not_covered_by_the_markers():
    for noise in (0.0, 0.3):  # the pairs stacked at ε = 0, fewer and spread out at 0.3
        fig = _demo2_figure(noise)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        scatter = next(ax for ax in fig.axes if ax.get_title() == "learned vs true Q")
        notes = [t for t in scatter.texts if t.get_text().endswith("pairs")]
        assert notes, f"ε = {noise}: no pair count on the scatter"
        points = np.concatenate([c.get_offsets() for c in scatter.collections])
        pixels = scatter.transData.transform(points)
        for note in notes:
            box = note.get_window_extent(renderer)
            inside = [p for p in pixels if box.x0 <= p[0] <= box.x1 and box.y0 <= p[1] <= box.y1]
            assert not inside, f"ε = {noise}: {note.get_text()!r} covers {len(inside)} markers"
            frame = scatter.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1, f"{note.get_text()!r} leaves the axes"
        plt.close(fig)


def test_the_start_label_does_not_overlap_the_start_cells_count_or_arrow():
    lay = get_layout("cliff")
    counts = np.full(lay.n_states, 20.0)
    fig, (heat_ax, policy_ax) = plt.subplots(2, 1, figsize=(7, 4))
    heat = plotting.GridPlot(heat_ax, lay, heat="counts")
    heat.update(heat=counts)
    policy = plotting.GridPlot(policy_ax, lay, policy=True)
    policy.update(policy=np.zeros(lay.n_states, dtype=int))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    start = lay.state_index(lay.start)
    for ax, grid in ((heat_ax, heat), (policy_ax, policy)):
        label = next(t for t in ax.texts if t.get_text() == "S")
        box = label.get_window_extent(renderer)
        others = [n for s, n in grid.numbers if s == start]
        others += [a for s, a in grid.arrows if s == start]
        assert others, "the start cell shows neither a count nor an arrow"
        for artist in others:
            assert not box.overlaps(artist.get_window_extent(renderer)), (ax.get_title(), artist)
    plt.close(fig)
