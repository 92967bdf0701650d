"""The help screen: the keys, and what each panel shows."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

KEYS = [
    ("space", "play / pause"),
    ("right, n", "one step"),
    ("+ / -", "faster / slower"),
    ("[ / ]", "previous / next association-map query"),
    ("tab", "switch the learner shown in the matrix and norms"),
    ("r", "start / stop recording to HDF5 (the schema of `mclstudio record`; live only)"),
    ("ctrl+p", "command palette: open, switch, export"),
    ("?", "this help"),
    ("q", "quit"),
]

PANELS = [
    ("status line", "playing or paused, the speed, the step and task of the stream, the learner shown in the "
                    "matrix and norms panels, and ● REC while a recording is being written."),
    ("example", "the image the learners just read, with its task and its label: learning happens only from "
                "these (x, y) pairs, one at a time, with no weight updates."),
    ("accuracy, forgetting", "how many test questions of all tasks seen so far each learner answers right (the "
                             "green curve is that figure over the steps), and its forgetting: how much it lost on "
                             "the earlier tasks since it knew them best, after the last finished task."),
    ("state memory", "what each learner must keep to go on: a fixed size for Mamba, Longhorn and the linear "
                     "attentions (Linear Transformer, Performer), "
                     "a cache growing with every token for the Transformer."),
    ("hidden-state norms", "the size of each layer's memory over the recent steps, one curve per layer."),
    ("accuracy matrix", "row k, column j: accuracy on task j after learning k+1 tasks; dark blue is 0%, "
                        "yellow 100%. Colours fading down a column are forgetting."),
    ("association map", "for one test question, how strongly the learner draws on each token it has read "
                        "(dark blue little, yellow much). Attention: the Transformer's weights on its past "
                        "tokens. Hidden attention: the same picture computed from Mamba's recurrence, which "
                        "keeps no tokens. ^ marks the tokens of the question's own class (where a good learner "
                        "looks); | marks where a new task began."),
]


class HelpScreen(ModalScreen):
    """The keys, and what each panel shows, in a sentence an audience understands."""

    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]

    def __init__(self, live: bool, mode_line: str) -> None:
        """live: learners are streaming (a replay has no recording key); mode_line: what is shown."""
        super().__init__()
        self.is_live = live
        self.mode_line = mode_line

    def compose(self) -> ComposeResult:
        keys = [(k, what) for k, what in KEYS if self.is_live or k != "r"]
        with VerticalScroll(id="help"):
            yield Label("mclstudio studio: keys", classes="title")
            yield Static("\n".join(f"[b]{k:<10}[/b] {what}" for k, what in keys))
            yield Label("\nthe panels", classes="title")
            yield Static("\n".join(f"[b]{name}[/b]: {what}" for name, what in PANELS), classes="panels")
            yield Static(f"\n{self.mode_line}\n[dim]escape or ? closes this screen[/]")
