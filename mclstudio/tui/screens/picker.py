"""The episode picker: choose the checkpoints, adapters and episode, and ask the app for it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from mclstudio.data.episodes import DataError, EpisodeSpec, parse_shots
from mclstudio.tui.messages import EpisodeRequested


class PickerScreen(Screen):
    """Choose the episode: dataset (the domain) and split, tasks, shots, seed and input noise.
    The defaults are the shipped Omniglot-mini meta-test split, so Enter starts the demo. ``checkpoints``
    and ``adapters``: the paths loaded now, shown for editing."""

    BINDINGS = [Binding("escape", "app.pop_screen_if_live", "back", show=False)]

    def __init__(self, spec: EpisodeSpec, checkpoints: list[str], adapters: list[str]) -> None:
        super().__init__()
        self.spec = spec
        self.checkpoints = checkpoints
        self.adapters = adapters

    def compose(self) -> ComposeResult:
        s = self.spec
        yield Header()
        with Vertical(id="picker"):
            yield Label("Episode", classes="title")
            yield Label("checkpoints (space-separated paths)")
            yield Input(" ".join(self.checkpoints), id="checkpoints")
            yield Label("adapters (from mclstudio adapt; may be empty)")
            yield Input(" ".join(self.adapters), id="adapters")
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
        """Check the fields and post EpisodeRequested; a bad field is shown here."""
        get = lambda key: self.query_one(f"#{key}", Input).value.strip()  # noqa: E731
        try:
            train_shots, per_task = parse_shots(get("shots"), int(get("tasks")))  # "5" or one per task "1,3,5"
            spec = EpisodeSpec(dataset=get("dataset"), split=str(self.query_one("#split", Select).value),
                               tasks=int(get("tasks")), train_shots=train_shots, shots=per_task,
                               test_shots=self.spec.test_shots, seed=int(get("seed")),
                               noise_std=float(get("noise")), num_codes=self.spec.num_codes)
        except DataError as exc:
            self.refuse(str(exc))
            return
        except ValueError as exc:
            self.refuse(f"not a number: {exc}")
            return
        self.post_message(EpisodeRequested(self, spec, get("checkpoints").split(), get("adapters").split()))

    def refuse(self, reason: str) -> None:
        """The episode cannot start: say why (one line, in red)."""
        self.query_one("#picker-error", Static).update(f"[red]{reason}[/]")
