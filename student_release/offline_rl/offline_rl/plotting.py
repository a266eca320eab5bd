"""Matplotlib helpers: each draws on a given ``ax`` and returns it (no ``plt.show``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colorbar import Colorbar
from matplotlib.colors import CSS4_COLORS, TABLEAU_COLORS, to_hex
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.layout_engine import TightLayoutEngine
from matplotlib.patches import FancyArrow, Rectangle
from matplotlib.patheffects import withStroke
from matplotlib.text import Text

from offline_rl.envs import ACTION_DELTAS, GridLayout, get_layout

__all__ = [
    "METHOD_COLOURS",
    "BarPlot",
    "FixedLayout",
    "GridPlot",
    "SeenUnseenPlot",
    "colour_name",
    "draw_grid",
    "legend_colours",
    "method_colours",
    "plot_bars",
    "plot_curves",
    "plot_q_seen_vs_unseen",
    "tight_layout",
]

#: One colour per method in every figure of the chapter (Demo 4, the learning curves, CartPole,
#: Demo 1): a label whose first word is a key (case-insensitive: "naive Q", "naive DQN (α=0)",
#: "CQL (α=1)", "BC (no training loop)") gets that colour.
METHOD_COLOURS: dict[str, str] = {
    "bc": "tab:blue",
    "naive": "tab:orange",
    "cql": "tab:green",
    "online": "tab:purple",
}
#: Colours for everything else, none of them a method's (so no other line looks like BC).
_OTHER_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "tab:red")


def tight_layout(fig: Figure) -> Figure:
    """``fig.tight_layout()``, leaving no layout engine on the figure.

    ``Figure.tight_layout`` leaves a placeholder engine behind, and ``savefig`` then draws the
    whole figure once more before rendering it (to let an engine lay it out): a third of a
    demo's redraw. The margins are the same; nothing re-lays the figure out afterwards.
    """
    TightLayoutEngine().execute(fig)
    return fig


def method_colours(labels: Sequence[str]) -> list[str]:
    """A colour per label: the method's from ``METHOD_COLOURS``, else the next other colour.

    Two labels of one figure never share a colour: when a second label names the same method
    ("online from zeros", "online from offline CQL"), it gets an other colour.
    """
    others = iter(_OTHER_COLOURS * (1 + len(labels) // len(_OTHER_COLOURS)))
    used: set[str] = set()
    colours = []
    for label in labels:
        words = str(label).split()
        colour = METHOD_COLOURS.get(words[0].lower()) if words else None
        if colour is None or colour in used:
            colour = next(others)
        used.add(colour)
        colours.append(colour)
    return colours


#: '#rrggbb' -> a colour's name: matplotlib's tab: colours first ("tab:blue" is "blue"), then
#: the CSS names ("black", "gray"); the first name given to a value wins.
_COLOUR_NAMES: dict[str, str] = {}
for _name, _value in [*TABLEAU_COLORS.items(), *CSS4_COLORS.items()]:
    _COLOUR_NAMES.setdefault(to_hex(_value), _name.removeprefix("tab:"))


def colour_name(colour: object) -> str:
    """A matplotlib colour as a word a person reads ("blue", "black"); '#rrggbb' if unnamed."""
    code = to_hex(colour)  # type: ignore[arg-type]
    return _COLOUR_NAMES.get(code, code)


def legend_colours(ax: Axes) -> dict[str, str]:
    """{legend label: colour name} of ``ax``'s legend, read from the drawn artists.

    The demos print this next to their figures, as words (screen readers; the browser test
    compares the methods' colours between figures)."""
    legend = ax.get_legend()
    if legend is None:
        return {}
    out = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=False):
        colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
        if isinstance(colour, np.ndarray) and colour.ndim == 2:  # a collection: its first colour
            colour = colour[0]
        out[text.get_text()] = colour_name(colour)
    return out


@dataclass
class FixedLayout:
    """A demo's layout, computed once: ``tight_layout`` on its first figure, the same margins
    and spacing for every later one (``Figure.subplots_adjust``); a figure laid out already
    (a demo updating its one figure in place) is left as it is.

    Every figure of a demo has the same panels; only numbers, titles and tick labels change
    between slider values (moving a panel edge by at most 1 % of the width). Measuring every
    text of a figure to lay it out again was a third of a move's CPU time (issue 24).
    """

    params: dict[str, float] | None = field(default=None)
    """The first figure's ``subplotpars`` (left, right, bottom, top, wspace, hspace); None
    until a figure was laid out."""
    last: Figure | None = field(default=None, repr=False)
    """The figure laid out last: applying the layout to it again does nothing (moving its
    axes would undo what its first draw placed, such as a grid's equal aspect)."""

    def apply(self, fig: Figure) -> Figure:
        """Lay ``fig`` out (the first time: measure; after that: reuse); returns ``fig``."""
        if fig is self.last:
            return fig
        if self.params is None:
            tight_layout(fig)
            keys = ("left", "right", "bottom", "top", "wspace", "hspace")
            self.params = {k: getattr(fig.subplotpars, k) for k in keys}
        else:
            fig.subplots_adjust(**self.params)
        self.last = fig
        return fig


def _cell_borders(rows: int, cols: int) -> list[list[tuple[float, float]]]:
    """The grid's inner and outer cell borders as segments [(x0, y0), (x1, y1)], in data
    coordinates (cell centres at integers): rows + 1 horizontal and cols + 1 vertical lines."""
    horizontal = [[(-0.5, r - 0.5), (cols - 0.5, r - 0.5)] for r in range(rows + 1)]
    vertical = [[(c - 0.5, -0.5), (c - 0.5, rows - 0.5)] for c in range(cols + 1)]
    return horizontal + vertical


class GridPlot:
    """A layout drawn on ``ax`` (walls, start S, goals G, pits X) whose heatmap, numbers, arrows
    and title :meth:`update` sets, in place.

    The artists are made once, here; an update changes their data. A demo's move thus redraws
    the same artists instead of building an axes, a colour bar and 30-50 patches and texts
    again (issue 24). :func:`draw_grid` is one ``GridPlot`` and one update, so a grid drawn
    once and a grid updated many times show the same pixels.
    """

    def __init__(
        self,
        ax: Axes,
        layout: str | GridLayout,
        heat: str | None = None,
        policy: bool = False,
        annotate: bool = True,
        heat_label: str | None = None,
    ) -> None:
        """
        Args:
            heat: ``"values"`` (state values) or ``"counts"`` (visits): a heatmap with a colour
                bar; None: no heatmap.
            policy: whether :meth:`update` draws a policy (an arrow per non-terminal cell).
            annotate: write each cell's heat value on it (only without a policy).
            heat_label: the colour bar's label; default "state value" for values, "visits
                (transitions from it)" for counts.
        """
        lay = get_layout(layout)
        self.ax, self.layout = ax, lay
        self.image: AxesImage | None = None
        self.colorbar: Colorbar | None = None
        if heat is not None:
            self.image = ax.imshow(np.zeros((lay.rows, lay.cols)), cmap="viridis", origin="upper")
            if heat_label is None:
                heat_label = "state value" if heat == "values" else "visits (transitions from it)"
            self.colorbar = ax.figure.colorbar(self.image, ax=ax, fraction=0.046, pad=0.04)
            self.colorbar.set_label(heat_label)
        ax.set_xlim(-0.5, lay.cols - 0.5)
        ax.set_ylim(lay.rows - 0.5, -0.5)
        ax.set_aspect("equal")
        # The cell borders as one collection of lines, and no ticks: drawn as minor ticks' grid
        # lines they were a Tick object each (labels, marks), and laying those out was most of a
        # demo's redraw (issue 24).
        ax.set_xticks([])
        ax.set_yticks([])
        ax.add_collection(LineCollection(_cell_borders(lay.rows, lay.cols), colors="0.7",
                                         linewidths=0.5, zorder=1.5))  # fmt: skip

        def cell_patch(cell: tuple[int, int], colour: str, label: str) -> None:
            r, c = cell
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, color=colour, alpha=0.8))
            ax.text(c, r, label, ha="center", va="center", fontsize=9, weight="bold",
                    color="white")  # fmt: skip

        for cell in lay.walls:
            cell_patch(cell, "0.25", "")
        for cell in lay.goals:
            cell_patch(cell, "tab:green", "G")
        for cell in lay.pits:
            cell_patch(cell, "tab:red", "X")
        r0, c0 = lay.start
        # In the start cell's lower-left corner: its centre holds a visit count or an arrow. A
        # white outline keeps it legible on a dark heat-map cell.
        outline = [withStroke(linewidth=2, foreground="white")]
        ax.text(c0 - 0.47, r0 + 0.45, "S", ha="left", va="bottom", fontsize=9, weight="bold",
                color="tab:blue", path_effects=outline)  # fmt: skip

        special = set(lay.walls) | set(lay.goals) | set(lay.pits)
        #: (state, its arrow) and (state, its number) of the cells an agent acts in: made here
        #: (an arrow pointing up, an empty number), set by update.
        self.arrows: list[tuple[int, FancyArrow]] = []
        self.numbers: list[tuple[int, Text]] = []
        for s in range(lay.n_states):
            cell = lay.coords(s)
            if cell in special:
                continue
            r, c = cell
            if policy:
                arrow = ax.arrow(c, r, 0.0, -0.4, head_width=0.15, length_includes_head=True,
                                 color="black")  # fmt: skip
                self.arrows.append((s, arrow))
            if heat is not None and annotate and not policy:
                number = ax.text(c, r, "", ha="center", va="center", fontsize=9, color="w")
                self.numbers.append((s, number))

    def update(
        self,
        heat: np.ndarray | None = None,
        policy: np.ndarray | None = None,
        title: str | None = None,
    ) -> None:
        """Show ``heat`` (S,) or (S, A) (summed over actions), ``policy`` (S,) int actions
        and ``title``; each only if the grid was made with it (a heatmap, a policy)."""
        lay = self.layout
        if self.image is not None and heat is not None:
            h = np.asarray(heat, dtype=float)
            h = (h.sum(axis=1) if h.ndim == 2 else h).reshape(lay.rows, lay.cols)
            self.image.set_data(h)
            finite = h[np.isfinite(h)]
            if finite.size:  # the range imshow gives a new image (NaN cells are masked)
                self.image.set_clim(finite.min(), finite.max())
            for s, number in self.numbers:
                r, c = lay.coords(s)
                v = float(h[r, c])
                number.set_text(f"{v:.0f}" if v.is_integer() else f"{v:.1f}")  # counts: no ".0"
        if policy is not None:
            for s, arrow in self.arrows:
                r, c = lay.coords(s)
                dr, dc = ACTION_DELTAS[int(policy[s])]
                arrow.set_data(x=c - 0.25 * dc, y=r - 0.25 * dr, dx=0.4 * dc, dy=0.4 * dr)
        if title is not None:
            self.ax.set_title(title)


def draw_grid(
    ax: Axes,
    layout: str | GridLayout,
    values: np.ndarray | None = None,
    policy: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    title: str | None = None,
    annotate: bool = True,
    heat_label: str | None = None,
) -> Axes:
    """Draw a layout: walls, start (S), goals (G), pits (X), and optionally a heatmap.

    Args:
        values: (S,) state values to show as a heatmap (and as numbers if ``annotate``).
        policy: (S,) int actions drawn as arrows on non-terminal cells.
        counts: (S, A) or (S,) visit counts shown as a heatmap when ``values`` is None.
        title: axes title.
        heat_label: the colour bar's label; default "state value" for ``values``, "visits to
            the state (dataset transitions)" for ``counts``.
    """
    heat = "values" if values is not None else "counts" if counts is not None else None
    grid = GridPlot(ax, layout, heat=heat, policy=policy is not None, annotate=annotate,
                    heat_label=heat_label)  # fmt: skip
    grid.update(values if values is not None else counts, policy, title)
    return ax


class SeenUnseenPlot:
    """Learned Q against true Q (or against the pair's index) for the seen and the never-seen
    (s, a) pairs of the visited states, updated in place by :meth:`update` (Demo 2's moves)."""

    def __init__(self, ax: Axes, with_truth: bool, title: str | None = None) -> None:
        self.ax, self.with_truth = ax, with_truth
        empty = np.empty((0, 2))
        self.seen = ax.scatter(empty[:, 0], empty[:, 1], label="seen in data", color="tab:blue",
                               s=18)  # fmt: skip
        self.unseen = ax.scatter(empty[:, 0], empty[:, 1], label="never seen (OOD)",
                                 color="tab:red", marker="x", s=24)  # fmt: skip
        self.notes: list[Text] = []
        self.diagonal = None
        if with_truth:
            self.diagonal = ax.plot([], [], "k--", linewidth=1, label="learned = true")[0]
            ax.set_xlabel("true Q*(s, a)")
        else:
            ax.set_xlabel("pair index s*A + a")
        ax.set_ylabel("learned Q(s, a)")
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title)

    def update(self, q: np.ndarray, counts: np.ndarray, q_true: np.ndarray | None = None) -> None:
        """Show ``q`` and ``counts`` (and ``q_true``), each (S, A); the axes' limits follow."""
        q, counts = np.asarray(q), np.asarray(counts)
        if q.shape != counts.shape or (q_true is not None and np.shape(q_true) != q.shape):
            raise ValueError("q, counts (and q_true) must all have shape (S, A).")
        if (q_true is not None) != self.with_truth:
            raise ValueError("give q_true exactly when the plot was made with_truth.")
        visited = (counts.sum(axis=1) > 0)[:, None] & np.ones_like(q, dtype=bool)
        seen, unseen = visited & (counts > 0), visited & (counts == 0)
        x = np.asarray(q_true) if q_true is not None else np.arange(q.size).reshape(q.shape)
        self.seen.set_offsets(np.column_stack([x[seen], q[seen]]))
        self.unseen.set_offsets(np.column_stack([x[unseen], q[unseen]]))
        # Many unseen pairs share one point (true -100 for the lava, learned 0): say how many,
        # or ten errors look like one.
        for note in self.notes:
            note.remove()
        self.notes = []
        points, n_at = np.unique(np.round(np.stack([x[unseen], q[unseen]], axis=1), 6), axis=0,
                                 return_counts=True)  # fmt: skip
        # Below its point, on a white box (the crosses of nearby points must not hide it), and
        # towards the middle of the plot (a count at the right edge would leave the axes).
        middle = float(np.mean([x[visited].min(), x[visited].max()])) if visited.any() else 0.0
        for (px, py), n in zip(points, n_at, strict=True):
            if n > 1:
                right = px > middle
                self.notes.append(self.ax.annotate(
                    f"{n} pairs", (px, py), textcoords="offset points",
                    xytext=(-4 if right else 4, -8), ha="right" if right else "left", va="top",
                    fontsize=9, color="tab:red",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                ))  # fmt: skip
        if self.diagonal is not None:
            lo = float(min(x[visited].min(), q[visited].min()))
            hi = float(max(x[visited].max(), q[visited].max()))
            self.diagonal.set_data([lo, hi], [lo, hi])
        # The limits a new plot of these points gets: relim counts the line, and the points
        # too from matplotlib 3.11 on (Colab's 3.10 skips collections: added here).
        self.ax.relim()
        self.ax.update_datalim(np.concatenate([self.seen.get_offsets(), self.unseen.get_offsets()]))
        self.ax.autoscale_view()


def plot_q_seen_vs_unseen(
    ax: Axes,
    q: np.ndarray,
    counts: np.ndarray,
    q_true: np.ndarray | None = None,
    title: str | None = None,
) -> Axes:
    """Scatter learned Q against true Q (or against pair index) for seen vs unseen pairs.

    Only states the dataset visits are shown. Args: q, counts, q_true: (S, A).
    """
    q, counts = np.asarray(q), np.asarray(counts)
    if q.shape != counts.shape or (q_true is not None and np.shape(q_true) != q.shape):
        raise ValueError("q, counts (and q_true) must all have shape (S, A).")
    SeenUnseenPlot(ax, with_truth=q_true is not None, title=title).update(q, counts, q_true)
    return ax


def plot_curves(
    ax: Axes,
    xs: Sequence[float] | np.ndarray,
    curves: dict[str, np.ndarray],
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    smooth: int = 1,
    reference_line: float | None = None,
) -> Axes:
    """One line per entry of ``curves`` (each (len(xs),)); ``smooth`` > 1 applies a moving
    average; ``reference_line`` draws a dashed horizontal line (e.g. the optimal return)."""
    xs = np.asarray(xs)
    for (name, ys), colour in zip(curves.items(), method_colours(list(curves)), strict=True):
        ys = np.asarray(ys, dtype=float)
        if ys.shape != xs.shape:
            raise ValueError(f"curve {name!r} has shape {ys.shape}, expected {xs.shape} like xs.")
        if smooth > 1 and ys.size >= smooth:
            ys = np.convolve(ys, np.ones(smooth) / smooth, mode="same")
        ax.plot(xs, ys, label=name, color=colour, marker="o" if xs.size <= 20 else None)
    if reference_line is not None:
        ax.axhline(reference_line, color="k", linestyle="--", linewidth=1, label="optimal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


class BarPlot:
    """A bar per name, labelled with its value, whose heights :meth:`update` sets in place
    (Demo 3's moves); the y limits follow as for new bars."""

    def __init__(
        self,
        ax: Axes,
        names: Sequence[str],
        reference_line: float | None = None,
        ylabel: str = "return",
        title: str | None = None,
    ) -> None:
        self.ax, self.names = ax, list(names)
        self.bars = ax.bar(self.names, [0.0] * len(self.names), color=method_colours(self.names))
        self.labels: list[Text] = []
        if reference_line is not None:
            ax.axhline(reference_line, color="k", linestyle="--", linewidth=1)
        ax.axhline(0.0, color="0.5", linewidth=0.5)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)

    def update(self, values: dict[str, float]) -> None:
        """Set each bar to ``values[name]`` and label it with that value."""
        heights = [float(values[name]) for name in self.names]
        for bar, height in zip(self.bars, heights, strict=True):
            bar.set_height(height)
        # bar_label reads the values (and each label's side) from the container, not the bars.
        self.bars.datavalues = np.asarray(heights)
        for label in self.labels:
            label.remove()
        # 500, 9.6, -17, 0.1235: no trailing zeros; below a negative bar, above a positive one.
        self.labels = self.ax.bar_label(self.bars, fmt="%.4g", fontsize=8)
        self.ax.relim()
        self.ax.autoscale_view()


def plot_bars(
    ax: Axes,
    values: dict[str, float],
    reference_line: float | None = None,
    ylabel: str = "return",
    title: str | None = None,
) -> Axes:
    """A bar per entry of ``values``, labelled with its value; optional dashed reference."""
    BarPlot(ax, list(values), reference_line, ylabel, title).update(values)
    return ax
