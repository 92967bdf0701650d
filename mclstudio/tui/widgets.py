"""Small widgets of the studio. Each one draws plain data handed to it (numpy arrays, numbers); none of
them touches a model. Rendering is done into rich Text so that it stays deterministic for snapshots."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from mclstudio.tui.feeds import Frame
from mclstudio.formatting import format_bytes

BLOCKS = "▁▂▃▄▅▆▇█"


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


def half_block_image(image: np.ndarray) -> Text:
    """(H, W) values in [-1, 1] (ink is high) -> H/2 lines of '▀', top pixel as foreground colour and
    bottom pixel as background colour, so each character cell shows two pixels."""
    img = np.round(255 * (np.clip(image, -1, 1) + 1) / 2).astype(int)
    if img.shape[0] % 2:
        img = np.vstack([img, np.zeros((1, img.shape[1]), dtype=int)])
    text = Text()
    for r in range(0, img.shape[0], 2):
        top, bottom = img[r].tolist(), img[r + 1].tolist()
        for t, b in zip(top, bottom):
            text.append("▀", _pixel_pair(t, b))
        text.append("\n")
    return text


class TextLines(Widget):
    """A panel drawn from rich Text through Textual's line API (``render_line``): the text is turned
    into strips of segments once per update, which is several times cheaper to composite than a Static
    when a panel holds hundreds of differently coloured cells (the image, the heatmaps)."""

    DEFAULT_CSS = "TextLines { height: auto; }"

    def __init__(self, text: str = "", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._text = Text(text)
        self._strips: list[Strip] | None = None

    @property
    def content(self) -> str:
        """The plain text shown (what tests read)."""
        return self._text.plain

    def update(self, text: Text | str) -> None:
        old_height = len(self._text.plain.splitlines())
        self._text = Text(text) if isinstance(text, str) else text
        self._strips = None
        self.refresh(layout=len(self._text.plain.splitlines()) != old_height)

    def _lines(self) -> list[Strip]:
        if self._strips is None:
            text = self._text.copy()
            text.rstrip()
            self._strips = [Strip(list(line.render(self.app.console))) for line in text.split("\n", allow_blank=True)]
        return self._strips

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return len(self._lines())

    def render_line(self, y: int) -> Strip:
        lines, width = self._lines(), self.size.width
        strip = lines[y] if y < len(lines) else Strip.blank(0)
        return strip.crop_extend(0, width, None).apply_style(self.rich_style)


class ExampleView(TextLines):
    """The example just read: its image in half-blocks, its task and label."""

    def show(self, frame: Frame) -> None:
        text = Text()
        if frame.image is not None:
            text.append_text(half_block_image(frame.image))
        else:
            text.append("(no image: the dataset is not at hand)\n", style="dim")
        text.append(f"task {frame.task + 1}/{frame.tasks}  label {frame.label}\n", style="bold")
        text.append(f"step {frame.step + 1}/{frame.num_examples}  episode {frame.episode}")
        self.update(text)


class AccuracyPanel(TextLines):
    """Per learner: running accuracy on the tasks seen (value and curve over steps), mean forgetting,
    and per-task accuracy after the last finished task as a row of coloured bars."""

    def show(self, frame: Frame, history: dict[str, list[float]], width: int = 40) -> None:
        text = Text()
        for s in frame.snapshots:
            acc = history[s.learner]
            last = next((v for v in reversed(acc) if not np.isnan(v)), float("nan"))
            forget = "-" if s.forgetting is None else f"{100 * float(np.mean(s.forgetting)):.1f}%"
            text.append(f"{s.learner:<20}", style="bold")
            text.append(f" acc {'  -  ' if np.isnan(last) else f'{100 * last:5.1f}%'}  forgetting {forget}\n")
            text.append(" " + sparkline(acc, width) + "\n", style="green")
            filled = ~np.isnan(s.accuracy_matrix).all(axis=1)
            if filled.any():
                row = s.accuracy_matrix[np.flatnonzero(filled)[-1]]
                text.append(" per task ")
                for v in row:
                    text.append(" " if np.isnan(v) else BLOCKS[min(int(v * 8), 7)], style=heat_style(v))
                text.append("\n")
            else:
                text.append(" per task (after the first task ends)\n", style="dim")
        self.update(text)


class MatrixHeatmap(TextLines):
    """The accuracy matrix A[k, j] (accuracy on task j after learning k + 1 tasks) as coloured cells."""

    def show(self, frame: Frame, learner: str) -> None:
        snap = next(s for s in frame.snapshots if s.learner == learner)
        m = snap.accuracy_matrix
        text = Text(f"{learner}: rows = tasks learned, columns = task\n", style="bold")
        for k in range(m.shape[0]):
            for j in range(m.shape[1]):
                text.append("  " if j > k else "██", style=heat_style(m[k, j]))
            text.append("\n")
        text.append("0% ", style="dim")
        for v in np.linspace(0, 1, 8):
            text.append("█", style=heat_style(v))
        text.append(" 100%", style="dim")
        self.update(text)


class StatsPanel(TextLines):
    """State memory and step latency of every learner. Latency can be hidden (deterministic snapshots)."""

    def show(self, frame: Frame, show_timing: bool = True) -> None:
        text = Text()
        for s in frame.snapshots:
            text.append(f"{s.learner}\n", style="bold")
            text.append(f" state {format_bytes(s.state_bytes):>10}")
            text.append(f"  step {1e3 * s.latency_s:5.1f} ms" if show_timing else "  step (hidden)")
            text.append("\n")
        self.update(text)


class NormsPanel(TextLines):
    """Hidden-state norm per layer over the steps, as one sparkline per layer (scaled per layer)."""

    def show(self, learner: str, norms: list[np.ndarray], width: int = 40) -> None:
        text = Text(f"{learner}: state norm per layer\n", style="bold")
        if norms:
            arr = np.stack(norms[-width:])  # (steps, layers)
            for layer in range(arr.shape[1]):
                col = arr[:, layer]
                top = float(col.max()) or 1.0
                text.append(f" L{layer} ")
                text.append(sparkline(list(col / top), width), style="cyan")
                text.append(f" {float(col[-1]):7.2f}\n")
        self.update(text)


class AssociationMap(TextLines):
    """For one query: each learner's association row (Mamba's hidden attention, the Transformer's
    attention) over the past tokens, last layer, binned to the panel width. Below each row, '|' marks
    a task boundary and '^' the true same-class tokens (the query's task)."""

    def show(self, query: int, maps: dict[str, tuple[np.ndarray, np.ndarray, int]], task_starts: np.ndarray,
             query_task: int, n_queries: int = 1, width: int = 100) -> None:
        text = Text(f"map {query + 1}/{n_queries}: a query of task {query_task + 1}, last layer\n", style="bold")
        if not maps:
            text.append("(computed at the end of each task; not yet)\n", style="dim")
        for name, (rows, same, step) in maps.items():
            row = np.abs(rows[-1, query])  # (tokens,) last layer
            tokens = row.shape[0]
            bins = max(1, min(width, tokens))
            edges = np.linspace(0, tokens, bins + 1).astype(int)
            weight = np.array([row[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
            weight = weight / (weight.max() or 1.0)
            match = np.array([same[query, a:b].max() for a, b in zip(edges[:-1], edges[1:])])
            bounds = {int(np.searchsorted(edges, 2 * t, side="right") - 1) for t in task_starts[1:] if 2 * t < tokens}
            text.append(f"{name} (after step {step + 1})\n")
            for b in range(bins):
                text.append("█", style=heat_style(float(weight[b])))
            text.append("\n")
            for b in range(bins):
                text.append("|" if b in bounds else ("^" if match[b] else " "),
                            style="red" if b in bounds else "yellow")
            text.append("\n")
        self.update(text)
