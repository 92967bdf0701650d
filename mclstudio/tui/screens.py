"""The studio's screens: the episode picker, the live view and the help screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from mclstudio.data.episodes import DataError, EpisodeSpec, parse_shots
from mclstudio.tui.widgets import AccuracyPanel, AssociationMap, ExampleView, MatrixHeatmap, NormsPanel, StatsPanel

if TYPE_CHECKING:
    from mclstudio.tui.app import StudioApp

# The live view's sizes: below MIN_SIZE a message replaces the panels; below FULL_SIZE (in either
# direction) the compact view shows accuracy, forgetting, state memory and the association map only.
MIN_SIZE = (80, 24)
FULL_SIZE = (110, 34)

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


class PickerScreen(Screen):
    """Choose the episode: dataset (the domain) and split, tasks, shots, seed and input noise.
    The defaults are the shipped Omniglot-mini meta-test split, so Enter starts the demo."""

    BINDINGS = [Binding("escape", "app.pop_screen_if_live", "back", show=False)]

    def __init__(self, spec: EpisodeSpec) -> None:
        super().__init__()
        self.spec = spec

    def compose(self) -> ComposeResult:
        s = self.spec
        yield Header()
        with Vertical(id="picker"):
            yield Label("Episode", classes="title")
            yield Label("checkpoints (space-separated paths)")
            yield Input(" ".join(self.app.checkpoint_paths()), id="checkpoints")  # type: ignore[attr-defined]
            yield Label("adapters (from mclstudio adapt; may be empty)")
            yield Input(" ".join(self.app.adapter_paths()), id="adapters")  # type: ignore[attr-defined]
            yield Label("dataset / domain (omniglot-mini, torchvision:<Name>)")
            yield Input(s.dataset, id="dataset")
            yield Label("split (meta-test or meta-train alphabets)")
            yield Select([("test", "test"), ("train", "train")], value=s.split, allow_blank=False, id="split")
            with Horizontal(classes="row"):
                for key, label, value in (("tasks", "tasks", s.tasks), ("shots", "shots", ",".join(map(str, s.task_shots)) if s.shots else s.train_shots),
                                          ("seed", "seed", s.seed), ("noise", "input noise", s.noise_std)):
                    with Vertical(classes="field"):
                        yield Label(label)
                        yield Input(str(value), id=key)
            yield Static("", id="picker-error")
            yield Button("Start (Enter)", id="start", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#start", Button).focus()

    def on_input_submitted(self) -> None:
        self.start()

    def on_button_pressed(self) -> None:
        self.start()

    def start(self) -> None:
        get = lambda key: self.query_one(f"#{key}", Input).value.strip()  # noqa: E731
        try:
            train_shots, per_task = parse_shots(get("shots"), int(get("tasks")))  # "5" or one per task "1,3,5"
            spec = EpisodeSpec(dataset=get("dataset"), split=str(self.query_one("#split", Select).value),
                               tasks=int(get("tasks")), train_shots=train_shots, shots=per_task,
                               test_shots=self.spec.test_shots, seed=int(get("seed")),
                               noise_std=float(get("noise")), num_codes=self.spec.num_codes)
        except DataError as exc:
            self.query_one("#picker-error", Static).update(f"[red]{exc}[/]")
            return
        except ValueError as exc:
            self.query_one("#picker-error", Static).update(f"[red]not a number: {exc}[/]")
            return
        paths, adapters = get("checkpoints").split(), get("adapters").split()
        error = self.app.start_episode(spec, paths, adapters)  # type: ignore[attr-defined]
        if error:
            self.query_one("#picker-error", Static).update(f"[red]{error}[/]")


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


def layout_mode(width: int, height: int) -> str:
    """"too-small", "compact" or "full" for a terminal of width x height cells."""
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        return "too-small"
    return "compact" if width < FULL_SIZE[0] or height < FULL_SIZE[1] else "full"


class LiveScreen(Screen):
    """The live view; it draws the app's latest frame and nothing else. Its layout follows the terminal
    size (``layout_mode``): full, compact, or a message when the terminal is too small."""

    BINDINGS = [
        Binding("space", "app.toggle_play", "play"),  # short: the footer fits in 80 columns
        Binding("right,n", "app.step", "step"),
        Binding("plus,+", "app.faster", "faster"),
        Binding("minus,-", "app.slower", "slower"),
        Binding("left_square_bracket", "app.query(-1)", "prev query", show=False),
        Binding("right_square_bracket", "app.query(1)", "next query", show=False),
        Binding("tab", "app.switch", "switch", show=False),
        Binding("r", "app.record", "record"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.mode = "full"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        yield Static("", id="too-small")
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield ExampleView("waiting for the first step", id="example")
                yield StatsPanel("", id="stats")
            with Vertical(id="middle"):
                yield AccuracyPanel("", id="accuracy")
                yield NormsPanel("", id="norms")
            yield MatrixHeatmap("", id="matrix")
        yield AssociationMap("", id="assoc")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"#example": "example", "#stats": "state memory and step latency",
                  "#accuracy": "accuracy, forgetting",
                  "#norms": "hidden-state norms", "#matrix": "accuracy matrix",
                  "#assoc": "association map (\\[ and ] pick the query)"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title
        self.apply_size(self.app.size.width, self.app.size.height)
        self.app.update_status()  # type: ignore[attr-defined]

    def on_resize(self, event: events.Resize) -> None:
        self.apply_size(event.size.width, event.size.height)

    def apply_size(self, width: int, height: int) -> None:
        self.mode = layout_mode(width, height)
        self.set_class(self.mode == "compact", "-compact")
        self.set_class(self.mode == "too-small", "-too-small")
        self.query_one("#accuracy").border_title = ("accuracy, forgetting, state memory" if self.mode == "compact"
                                                    else "accuracy, forgetting")
        if self.mode == "too-small":
            self.query_one("#too-small", Static).update(
                f"The terminal is {width}x{height}: the studio needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}.\n"
                "Enlarge the window (or make the font smaller). The stream goes on; q quits.")
        self.app.layout_changed()  # type: ignore[attr-defined]


class HelpScreen(ModalScreen):
    """The keys, and what each panel shows, in a sentence an audience understands."""

    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        app: StudioApp = self.app  # type: ignore[assignment]
        live = app.feed is None or app.feed.live
        keys = [(k, what) for k, what in KEYS if live or k != "r"]
        with VerticalScroll(id="help"):
            yield Label("mclstudio studio: keys", classes="title")
            yield Static("\n".join(f"[b]{k:<10}[/b] {what}" for k, what in keys))
            yield Label("\nthe panels", classes="title")
            yield Static("\n".join(f"[b]{name}[/b]: {what}" for name, what in PANELS), classes="panels")
            yield Static(f"\n{app.mode_line()}\n[dim]escape or ? closes this screen[/]")
