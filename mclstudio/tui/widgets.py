"""Small widgets of the studio. Each one draws plain data handed to it (numpy arrays, numbers); none of
them touches a model. Rendering is done into StyledLines (segments per line) so that it stays deterministic for snapshots.

The live panels (FramePanel) take a reactive ``view``, bound to the live screen's: each new View (the
newest frame and what the screen kept of the frames before it) makes every panel draw its part."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.cells import cell_len
from rich.color import Color
from rich.style import Style
from rich.segment import Segment
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from mclstudio.engine.stream import Snapshot
from mclstudio.formatting import format_bytes
from mclstudio.recording.playback import Frame, map_learners

BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True, eq=False)  # compared by identity: a new View is a new redraw
class View:
    """What the live panels draw at one redraw: the newest frame and the history the live screen kept.

    history: learner -> running accuracy per step (NaN where not evaluated); norms: learner -> one
    (n_layers,) array of state norms per step; maps: learner -> its newest association rows
    (n_layers, R, 2N), same-class marks (R, 2N) and the step they were computed at; models: learner ->
    its model ("mamba", ...). layout: bumped when the screen changes size or layout (every panel draws
    again).
    """

    frame: Frame
    history: dict[str, list[float]]
    norms: dict[str, list[np.ndarray]]
    maps: dict[str, tuple[np.ndarray, np.ndarray, int]]
    models: dict[str, str]
    selected: str  # the learner the matrix and norms panels show
    query_row: int  # the association map's query (any integer: taken modulo the queries)
    compact: bool
    show_timing: bool
    layout: int = 0


def grey(v: float) -> str:
    """[0, 1] -> an rgb colour string from black to white."""
    g = int(round(255 * min(max(v, 0.0), 1.0)))
    return f"rgb({g},{g},{g})"


def heat(v: float) -> str:
    """[0, 1] -> a colour from dark blue (0) through teal to yellow (1); NaN -> dark grey."""
    if np.isnan(v):
        return "rgb(40,40,40)"
    v = min(max(v, 0.0), 1.0)
    r, g, b = int(250 * v * v), int(40 + 190 * v), int(120 + 60 * (1 - v) - 100 * v * v)
    return f"rgb({r},{g},{max(b, 0)})"


def sparkline(values: list[float], width: int) -> str:
    """The last ``width`` values in [0, 1] as block characters (a blank for NaN)."""
    out = []
    for v in values[-width:]:
        out.append(" " if v is None or np.isnan(v) else BLOCKS[min(int(v * len(BLOCKS)), len(BLOCKS) - 1)])
    return "".join(out)


@lru_cache(maxsize=4096)
def _pixel_pair(top: int, bottom: int) -> Style:
    """The style of one half-block cell; cached because parsing colours dominates drawing."""
    return Style(color=Color.from_rgb(top, top, top), bgcolor=Color.from_rgb(bottom, bottom, bottom))


@lru_cache(maxsize=512)
def _heat_style(level: int) -> Style:
    return Style.parse(heat(level / 255) if level >= 0 else heat(float("nan")))


def heat_style(v: float) -> Style:
    """heat() as a cached Style, quantised to 256 levels."""
    return _heat_style(-1 if np.isnan(v) else int(round(255 * min(max(v, 0.0), 1.0))))


@lru_cache(maxsize=64)
def parse_style(style: str) -> Style:
    return Style.parse(style)


class StyledLines:
    """Lines of styled text built left to right, like rich Text's ``append`` but kept as segments per
    line, so that drawing them needs no re-parsing or splitting (rich Text does both, and it dominated
    the studio's redraws). Neighbouring pieces with the same style are merged into one segment."""

    def __init__(self, text: str = "", style: Style | str | None = None) -> None:
        self.lines: list[list[Segment]] = [[]]
        if text:
            self.append(text, style)

    def append(self, text: str, style: Style | str | None = None) -> StyledLines:
        """Add ``text`` to the current line; each newline in it starts a new line."""
        if isinstance(style, str):
            style = parse_style(style)
        for n, part in enumerate(text.split("\n")):
            if n:
                self.lines.append([])
            if part:
                line = self.lines[-1]
                if line and line[-1].style == style:  # same style as the last piece: extend it
                    line[-1] = Segment(line[-1].text + part, style)
                else:
                    line.append(Segment(part, style))
        return self

    def extend(self, other: StyledLines) -> StyledLines:
        """Append another StyledLines (its first line continues the current one)."""
        for n, segments in enumerate(other.lines):
            if n:
                self.lines.append([])
            for segment in segments:
                self.append(segment.text, segment.style)
        return self

    @property
    def plain(self) -> str:
        return "\n".join("".join(segment.text for segment in line) for line in self.lines)

    def trimmed(self) -> list[list[Segment]]:
        """The lines without the trailing empty ones (an empty text is one empty line)."""
        lines = list(self.lines)
        while len(lines) > 1 and not lines[-1]:
            lines.pop()
        return lines


def half_block_image(image: np.ndarray) -> StyledLines:
    """(H, W) values in [-1, 1] (ink is high) -> H/2 lines of '▀', top pixel as foreground colour and
    bottom pixel as background colour, so each character cell shows two pixels."""
    img = np.round(255 * (np.clip(image, -1, 1) + 1) / 2).astype(int)
    if img.shape[0] % 2:
        img = np.vstack([img, np.zeros((1, img.shape[1]), dtype=int)])
    text = StyledLines()
    # the cells as segments directly (hundreds per image, each with its own colours)
    text.lines = [[Segment("▀", _pixel_pair(t, b)) for t, b in zip(img[r].tolist(), img[r + 1].tolist())]
                  for r in range(0, img.shape[0], 2)] + [[]]
    return text


def fit(segments: list[Segment], width: int, style: Style) -> Strip:
    """One line cut or padded to ``width`` cells under the panel's base ``style``, as one new Strip
    (Strip's own crop_extend and apply_style make one Strip each, and a Strip is costly to make)."""
    length = sum(cell_len(segment.text) for segment in segments)
    if length > width:
        segments = list(Strip(segments, length).crop(0, width))
    elif length < width:
        segments = [*segments, Segment(" " * (width - length))]
    return Strip(Segment.apply_style(segments, style), width)


class TextLines(Widget):
    """A panel drawn from StyledLines through Textual's line API (``render_line``). The lines, cut to the
    panel's width and given its base style, are kept until the next update: Textual calls render_line
    again for every repaint (a scroll, a layout, a neighbour's refresh), and those then cost nothing."""

    DEFAULT_CSS = "TextLines { height: auto; }"

    def __init__(self, text: str = "", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._text = StyledLines(text)
        self._lines = self._text.trimmed()
        self._shown: tuple[int, Style, list[Strip]] | None = None  # (width, base style, lines drawn)

    @property
    def content(self) -> str:
        """The plain text shown (what tests read)."""
        return self._text.plain

    def update(self, text: StyledLines | str) -> None:
        old_height = len(self._lines)
        self._text = StyledLines(text) if isinstance(text, str) else text
        self._lines = self._text.trimmed()
        self._shown = None
        self.refresh(layout=len(self._lines) != old_height)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return len(self._lines)

    def render_lines(self, crop: Region) -> list[Strip]:
        # the base style (background, colour from the CSS) once per repaint, not once per line
        width, style = self.size.width, self.rich_style
        if self._shown is None or self._shown[:2] != (width, style):
            self._shown = (width, style, [fit(line, width, style) for line in self._lines])
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        assert self._shown is not None  # set by render_lines, which Textual calls first
        width, style, lines = self._shown
        return lines[y] if y < len(lines) else Strip.blank(width, style)


class FramePanel(TextLines):
    """A live panel: draws each new ``view`` (bound to the live screen's reactive view) with ``draw``."""

    view: reactive[View | None] = reactive(None, repaint=False, init=False)  # update() repaints

    def watch_view(self, view: View | None) -> None:
        if view is not None:
            self.draw(view)

    def draw(self, view: View) -> None:
        raise NotImplementedError


class ExampleView(FramePanel):
    """The example just read: its image in half-blocks, its task and label."""

    def draw(self, view: View) -> None:
        self.show(view.frame)

    def show(self, frame: Frame) -> None:
        text = StyledLines()
        if frame.image is not None:
            text.extend(half_block_image(frame.image))
        else:
            text.append("(no image: the dataset is not at hand)\n", style="dim")
        text.append(f"task {frame.task + 1}/{frame.tasks}  label {frame.label}\n", style="bold")
        text.append(f"step {frame.step + 1}/{frame.num_examples}  episode {frame.episode}")
        self.update(text)


def curve(values: list[float], width: int, rows: int) -> list[str]:
    """The last ``width`` values in [0, 1] as a block chart ``rows`` lines high (top line first); a
    blank column for NaN. One row is the sparkline."""
    levels = [None if v is None or np.isnan(v) else min(max(v, 0.0), 1.0) * rows * 8 for v in values[-width:]]
    lines = []
    for r in range(rows - 1, -1, -1):  # the top line holds the levels above r * 8 eighths
        line = []
        for level in levels:
            fill = 0 if level is None else int(min(max(level - 8 * r, 0), 8))
            line.append(" " if fill == 0 else BLOCKS[fill - 1])
        lines.append("".join(line))
    return lines


def forgetting_text(snap: Snapshot) -> str:
    """The mean forgetting after the last finished task (``Snapshot.mean_forgetting``), kept through the
    next task; "-" only before the first task ends."""
    value = snap.mean_forgetting
    return "-" if value is None else f"{100 * value:.1f}%"


def accuracy_text(history: list[float]) -> str:
    last = next((v for v in reversed(history) if not np.isnan(v)), float("nan"))
    return "  -  " if np.isnan(last) else f"{100 * last:5.1f}%"


class AccuracyPanel(FramePanel):
    """Per learner: running accuracy on the tasks seen (value and curve over steps), mean forgetting,
    and per-task accuracy after the last finished task as a row of coloured bars. The curves take the
    panel's width and, on a tall panel, up to four lines each.

    Compact (a small terminal): one line per learner with accuracy, forgetting, state memory and as
    much of the curve as fits."""

    def draw(self, view: View) -> None:
        self.show(view.frame, view.history, compact=view.compact)

    def show(self, frame: Frame, history: dict[str, list[float]], compact: bool = False) -> None:
        width, height = max(self.size.width, 20), self.size.height
        if compact:
            self.update(self._compact(frame, history, width))
            return
        text = StyledLines()
        n = len(frame.snapshots)
        name_width = max(len(s.learner) for s in frame.snapshots)
        stats_width = len(" acc 100.0%  forgetting 100.0%")
        two_lines = name_width + stats_width > width  # a long name: the figures go under it, never cut
        # the lines of each learner: its name and figures, the curve (1 to 16 lines), per-task bars;
        # on a short panel the per-task bars go first (the accuracy matrix shows them too)
        head = 1 + two_lines
        per_task = not height or height >= n * (head + 2)
        rows = min(16, max(1, (height - n * (head + per_task)) // n)) if height else 1
        for s in frame.snapshots:
            text.append(f"{s.learner:<{name_width}}" if not two_lines else s.learner + "\n ", style="bold")
            text.append(f" acc {accuracy_text(history[s.learner])}  forgetting {forgetting_text(s)}\n")
            for line in curve(history[s.learner], width - 1, rows):
                text.append(" " + line + "\n", style="green")
            filled = ~np.isnan(s.accuracy_matrix).all(axis=1)
            if not per_task:
                continue
            if filled.any():
                row = s.accuracy_matrix[np.flatnonzero(filled)[-1]]
                text.append(" per task ")
                for v in row:
                    text.append(" " if np.isnan(v) else BLOCKS[min(int(v * 8), 7)], style=heat_style(v))
                text.append("\n")
            else:
                text.append(" per task (after the first task ends)\n", style="dim")
        self.update(text)

    @staticmethod
    def _compact(frame: Frame, history: dict[str, list[float]], width: int) -> StyledLines:
        text = StyledLines()
        name_width = min(max(len(s.learner) for s in frame.snapshots), 18)
        for s in frame.snapshots:
            name = s.learner if len(s.learner) <= name_width else s.learner[: name_width - 1] + "…"
            figures = (f" acc {accuracy_text(history[s.learner])}  forgetting {forgetting_text(s):>6}"
                       f"  state {format_bytes(s.state_bytes):>9} ")
            text.append(f"{name:<{name_width}}", style="bold").append(figures)
            room = width - name_width - len(figures)
            if room > 0:
                text.append(sparkline(history[s.learner], room), style="green")
            text.append("\n")
        return text


class MatrixHeatmap(FramePanel):
    """The accuracy matrix A[k, j] (accuracy on task j after learning k + 1 tasks) as coloured cells."""

    _drawn: tuple = ()

    def draw(self, view: View) -> None:
        """Only when the matrix changed (it changes at task ends), the learner shown or the layout."""
        snap = next(s for s in view.frame.snapshots if s.learner == view.selected)
        key = (view.frame.episode, view.selected, int((~np.isnan(snap.accuracy_matrix)).sum()), view.layout)
        if key != self._drawn:
            self.show(view.frame, view.selected)
            self._drawn = key

    def show(self, frame: Frame, learner: str) -> None:
        snap = next(s for s in frame.snapshots if s.learner == learner)
        m = snap.accuracy_matrix
        text = StyledLines(f"{learner}: rows = tasks learned, columns = task\n", style="bold")
        # each task one line, or up to three on a tall panel (the title and the scale take two lines)
        lines_per_task = min(3, max(1, (self.size.height - 2) // max(m.shape[0], 1)))
        for k in range(m.shape[0]):
            for _ in range(lines_per_task):
                for j in range(m.shape[1]):
                    text.append("  " if j > k else "██", style=heat_style(m[k, j]))
                text.append("\n")
        text.append("0% ", style="dim")
        for v in np.linspace(0, 1, 8):
            text.append("█", style=heat_style(v))
        text.append(" 100%", style="dim")
        self.update(text)


class StatsPanel(FramePanel):
    """State memory and step latency of every learner, one line each when the panel is wide enough.
    Latency can be hidden (deterministic snapshots)."""

    def draw(self, view: View) -> None:
        self.show(view.frame, view.show_timing)

    def show(self, frame: Frame, show_timing: bool = True) -> None:
        text = StyledLines()
        name_width = max(len(s.learner) for s in frame.snapshots)
        one_line = name_width + 19 <= self.size.width  # name, " 132.0 KiB", "  2.5 ms"
        for s in frame.snapshots:
            text.append(f"{s.learner:<{name_width}}" if one_line else f"{s.learner}\n", style="bold")
            text.append(f" {format_bytes(s.state_bytes):>9}")
            text.append(f" {1e3 * s.latency_s:5.1f} ms" if show_timing else " (hidden)")
            text.append("\n")
        self.update(text)


class NormsPanel(FramePanel):
    """Hidden-state norm per layer over the steps, as one sparkline per layer (scaled per layer)."""

    def draw(self, view: View) -> None:
        self.show(view.selected, view.norms.get(view.selected, []))

    def show(self, learner: str, norms: list[np.ndarray]) -> None:
        width = max(self.size.width - 13, 10)  # " L0 " + the curve + " 1234.56"
        text = StyledLines(f"{learner}: state norm per layer\n", style="bold")
        if norms:
            arr = np.stack(norms[-width:])  # (steps, layers)
            for layer in range(arr.shape[1]):
                col = arr[:, layer]
                top = float(col.max()) or 1.0
                text.append(f" L{layer} ")
                text.append(sparkline(list(col / top), width), style="cyan")
                text.append(f" {float(col[-1]):7.2f}\n")
        self.update(text)


# What a learner's association row is: Mamba's and Longhorn's "hidden attention" (the attention their
# recurrence implies), the attention weights of the attention learners.
HIDDEN_ATTENTION_MODELS = ("mamba", "longhorn")


def association_kind(model: str) -> str:
    return "hidden attention" if model in HIDDEN_ATTENTION_MODELS else "attention"


def map_legend() -> StyledLines:
    """The association map's legend: the colour scale and the two marks."""
    text = StyledLines("weight low ", style="dim")
    for v in np.linspace(0, 1, 8):
        text.append("█", style=heat_style(float(v)))
    text.append(" high   ", style="dim")
    text.append("^", style="yellow").append(" same class as the query   ", style="dim")
    text.append("|", style="red").append(" task boundary", style="dim")
    return text


class AssociationMap(FramePanel):
    """For one query: each learner's association row (Mamba's hidden attention, the Transformer's
    attention) over the past tokens, last layer, binned to the panel width. Below each row, '|' marks
    a task boundary and '^' the true same-class tokens (the query's task). A legend line ends it."""

    _drawn: tuple = ()

    def draw(self, view: View) -> None:
        """Only when a map, the query or the layout changed (maps are computed at task ends). Mamba's hidden
        attention next to the Transformer's attention when both are loaded; else the first two learners."""
        f = view.frame
        key = (f.episode, view.query_row, tuple((n, m[2]) for n, m in view.maps.items()), view.layout)
        if key == self._drawn:
            return
        self._drawn = key
        names = [s.learner for s in f.snapshots if s.learner in view.maps]
        shown = {n: view.maps[n] for n in map_learners(names, view.models)}
        kinds = {n: association_kind(view.models.get(n, "")) for n in shown}
        q = view.query_row % max(len(f.rows_query_task), 1)
        qtask = int(f.rows_query_task[q]) if len(f.rows_query_task) else 0
        self.show(q, shown, f.task_starts, qtask, len(f.rows_query_task), max(self.size.width - 2, 20), kinds,
                  fill_height=view.compact)

    def show(self, query: int, maps: dict[str, tuple[np.ndarray, np.ndarray, int]], task_starts: np.ndarray,
             query_task: int, n_queries: int = 1, width: int = 100, kinds: dict[str, str] | None = None,
             fill_height: bool = False) -> None:
        """fill_height: draw each heat row taller (up to 4 lines) to fill the panel's height."""
        text = StyledLines(f"map {query + 1}/{n_queries}: a query of task {query_task + 1}, last layer\n", style="bold")
        if not maps:
            text.append("(computed at the end of each task; not yet)\n", style="dim")
        # title and legend, then per map a label, the heat row(s) and the marks
        heat_lines = min(4, max(1, (self.size.height - 2) // len(maps) - 2)) if fill_height and maps else 1
        for name, (rows, same, step) in maps.items():
            row = np.abs(rows[-1, query])  # (tokens,) last layer
            tokens = row.shape[0]
            bins = max(1, min(width, tokens))
            edges = np.linspace(0, tokens, bins + 1).astype(int)
            weight = np.array([row[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
            weight = weight / (weight.max() or 1.0)
            match = np.array([same[query, a:b].max() for a, b in zip(edges[:-1], edges[1:])])
            bounds = {int(np.searchsorted(edges, 2 * t, side="right") - 1) for t in task_starts[1:] if 2 * t < tokens}
            kind = (kinds or {}).get(name, "attention")
            text.append(f"{name}: {kind} (after step {step + 1})\n")
            for _ in range(heat_lines):
                for b in range(bins):
                    text.append("█", style=heat_style(float(weight[b])))
                text.append("\n")
            for b in range(bins):
                text.append("|" if b in bounds else ("^" if match[b] else " "),
                            style="red" if b in bounds else "yellow")
            text.append("\n")
        text.extend(map_legend())
        self.update(text)
