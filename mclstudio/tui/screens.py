"""The studio's screens: the episode picker, the live view and the help screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from mclstudio.data.episodes import DataError, EpisodeSpec, parse_shots
from mclstudio.tui.widgets import AccuracyPanel, AssociationMap, ExampleView, MatrixHeatmap, NormsPanel, StatsPanel

if TYPE_CHECKING:
    from mclstudio.tui.app import StudioApp

KEYS = [
    ("space", "play / pause"),
    ("right, n", "one step"),
    ("+ / -", "faster / slower"),
    ("[ / ]", "previous / next association-map query"),
    ("tab", "switch the learner shown in the matrix and norms"),
    ("r", "start / stop recording to HDF5 (the schema of `mclstudio record`)"),
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


class LiveScreen(Screen):
    """The live view; it draws the app's latest frame and nothing else."""

    BINDINGS = [
        Binding("space", "app.toggle_play", "play/pause"),
        Binding("right,n", "app.step", "step"),
        Binding("plus,+", "app.faster", "faster"),
        Binding("minus,-", "app.slower", "slower"),
        Binding("left_square_bracket", "app.query(-1)", "prev query", show=False),
        Binding("right_square_bracket", "app.query(1)", "next query", show=False),
        Binding("tab", "app.switch", "switch", show=False),
        Binding("r", "app.record", "record"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield ExampleView("waiting for the first step (space plays, n steps)", id="example")
                yield StatsPanel("", id="stats")
            with VerticalScroll(id="middle"):
                yield AccuracyPanel("", id="accuracy")
                yield NormsPanel("", id="norms")
            yield MatrixHeatmap("", id="matrix")
        yield AssociationMap("", id="assoc")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"#example": "example", "#stats": "state memory and step latency",
                  "#accuracy": "running accuracy (tasks seen), forgetting, per-task accuracy",
                  "#norms": "hidden-state norms", "#matrix": "accuracy matrix",
                  "#assoc": "association map (\\[ and ] pick the query)"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title


class HelpScreen(ModalScreen):
    """The keys."""

    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        app: StudioApp = self.app  # type: ignore[assignment]
        lines = "\n".join(f"[b]{k:<10}[/b] {what}" for k, what in KEYS)
        with Vertical(id="help"):
            yield Label("mclstudio studio: keys", classes="title")
            yield Static(lines)
            yield Static(f"\n{app.mode_line()}\n[dim]escape or ? closes this screen[/]")
