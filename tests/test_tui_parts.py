"""The studio's parts without a running app: the player's controls, the export files (never replacing
one), the JSON export's values and the one-line reasons. Known answers, no models, milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mclstudio.engine.stream import Snapshot
from mclstudio.recording.playback import Frame
from mclstudio.tui.exports import episode_json, new_path, one_line, write_export
from mclstudio.tui.player import SPEEDS, Player


def test_player_controls() -> None:
    player = Player(worker_threads=1)
    assert (player.controls.playing, player.controls.steps, player.speed) == (False, 0, 10)
    player.step()
    player.step()
    assert (player.controls.playing, player.controls.steps) == (False, 2)
    player.toggle_play()  # pending single steps do not outlive a play
    assert (player.controls.playing, player.controls.steps) == (True, 0)
    player.step()  # a step pauses
    assert (player.controls.playing, player.controls.steps) == (False, 1)
    for _ in range(len(SPEEDS) + 2):
        player.faster()
    assert player.speed is None  # as fast as the models go, and no further
    for _ in range(len(SPEEDS) + 2):
        player.slower()
    assert player.speed == 0.5


def test_player_recording_and_a_new_feed(tmp_path: Path) -> None:
    player = Player(worker_threads=1)
    player.recorded_episodes = 3
    player.start_recording(tmp_path / "a.h5")
    assert (player.controls.recording_to, player.recorded_episodes) == (tmp_path / "a.h5", 0)
    assert player.stop_recording() == tmp_path / "a.h5" and player.controls.recording_to is None
    player.start_recording(tmp_path / "b.h5")
    assert player.new_feed() == 1 and player.new_feed() == 2  # the old worker's frames are dropped
    assert player.controls.recording_to is None  # a new feed stops the recording
    assert player.wake.is_set()


def test_exports_never_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("mine")
    (tmp_path / "x-2.json").write_text("mine too")
    assert new_path(tmp_path, "x", ".json") == tmp_path / "x-3.json"
    assert write_export(tmp_path, "x", ".json", "{}") == tmp_path / "x-3.json"
    assert (tmp_path / "x.json").read_text() == "mine" and (tmp_path / "x-3.json").read_text() == "{}"
    with pytest.raises(OSError):
        write_export(tmp_path / "missing", "x", ".json", "{}")
    assert not (tmp_path / "missing").exists()


def test_one_line() -> None:
    assert one_line(OSError(28, "No space left on device")) == "OSError: [Errno 28] No space left on device"
    assert one_line(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("x" * 200)) == "ValueError: " + "x" * 160


def test_episode_json_values() -> None:
    """Two tasks: task 1 fell from 1.0 to 0.5, so forgetting is [0.5, 0] and its mean (over every task
    but the newest) 0.5; NaN becomes null."""
    matrix = np.array([[1.0, np.nan], [0.5, 1.0]])
    snap = Snapshot("m", 1, 4, 1, True, 640, np.array([3.0, 4.0]), 0.001, accuracy=0.75, accuracy_matrix=matrix,
                    forgetting=np.array([0.5, 0.0]))
    frame = Frame(0, 1, 2, 2, 1, 7, [snap])
    out = json.loads(episode_json(frame, {"m": [np.nan, 0.75]}, {"m": [np.array([1.0, 2.0]), np.array([3.0, 4.0])]}))
    assert out == {"episode": 0, "step": 1, "learners": {"m": {
        "running_accuracy": [None, 0.75], "accuracy_matrix": [[1.0, None], [0.5, 1.0]], "forgetting": [0.5, 0.0],
        "mean_forgetting": 0.5, "state_bytes": 640, "layer_norms": [[1.0, 2.0], [3.0, 4.0]]}}}


def imported_modules(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_the_app_knows_the_app_and_recording_knows_no_studio() -> None:
    """The screens, player, messages, palette and panels reach the app through messages and Textual's
    actions, never by importing it; playback (recording/) imports nothing from the studio."""
    package = Path(__file__).resolve().parents[1] / "mclstudio"
    for path in [*(package / "tui").rglob("*.py")]:
        if path.name not in ("app.py", "cli.py", "__init__.py", "screenshots.py") or path.parent.name == "screens":
            assert "mclstudio.tui.app" not in imported_modules(path), path
    for path in (package / "recording").rglob("*.py"):
        assert not any(m.startswith("mclstudio.tui") for m in imported_modules(path)), path
