"""The studio in a live demo: what is on screen at 80x24, 120x40 and 200x50 (read back as text), the
message below the minimum size, --play, the replay studio without recording, the help screen, and one
forgetting figure shared with `mclstudio replay`."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.hdf5 import read_recording
from mclstudio.recording.session import recording_summary, record_session
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.tui.app import StudioApp
from mclstudio.tui.cli import build_open_app, build_replay_app
from mclstudio.tui.headless import screen_text, settle, start_live, wait_until
from mclstudio.tui.screens import HelpScreen, LiveScreen
from mclstudio.tui.widgets import AccuracyPanel

ROOT = Path(__file__).resolve().parent.parent
CKPTS = [str(ROOT / "checkpoints" / f"{m}.pt") for m in
         ("mamba", "transformer", "linear_transformer", "performer", "longhorn")]
MAMBA = CKPTS[0]
pytestmark = pytest.mark.timeout(120)


def five_learners(tmp_path: Path, **kw: object) -> StudioApp:
    return build_open_app(CKPTS, tasks=4, shots=2, seed=0, device="cpu", record_dir=tmp_path, show_timing=False,
                          **kw)  # type: ignore[arg-type]


def run(app: StudioApp, size: tuple[int, int], steps: int) -> str:
    """The screen as text after Enter on the picker and ``steps`` single steps."""
    async def go() -> str:
        async with app.run_test(size=size) as pilot:
            await start_live(pilot)
            if steps:
                for _ in range(steps):
                    await pilot.press("n")
                await settle(pilot, steps)
            else:
                await pilot.pause(0.2)
            return screen_text(app)

    return asyncio.run(go())


NAMES = ("mamba", "transformer", "linear_transformer", "performer", "longhorn")
LEGEND = "weight low ████████ high   ^ same class as the query   | task boundary"


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)])
def test_the_important_labels_are_on_screen(tmp_path: Path, size: tuple[int, int]) -> None:
    # step 3: the first task (steps 1-2) is finished, so forgetting has a value and the map is drawn
    text = run(five_learners(tmp_path), size, 3)
    assert len(re.findall(r"forgetting +0\.0%", text)) == 5, text  # every learner's, never cut
    assert all(re.search(rf"\b{name}\b", text) for name in NAMES)
    assert "step 3/8 task 2/4" in text  # the status line
    assert "? help" in text.splitlines()[-1]  # the footer's last key is not cut
    assert "association map" in text and LEGEND in text
    assert "mamba: hidden attention (after step 2)" in text and "transformer: attention (after step 2)" in text
    if size == (80, 24):  # compact: state memory next to the accuracy, no example or matrix
        assert len(re.findall(r"state +\d+\.\d KiB", text)) == 5
        assert "accuracy matrix" not in text and "▀" not in text
    else:
        for title in ("example", "state memory and step latency", "accuracy, forgetting", "hidden-state norms",
                      "accuracy matrix", "rows = tasks learned, columns = task", "0% ████████ 100%"):
            assert title in text, (title, text)
        assert "80.0 KiB" in text and "▀" in text


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_first_hint_is_never_cut(tmp_path: Path, size: tuple[int, int]) -> None:
    assert "(space plays, n steps)" in run(five_learners(tmp_path), size, 0)


def test_below_the_minimum_size_a_message_replaces_the_panels(tmp_path: Path) -> None:
    async def go() -> None:
        app = five_learners(tmp_path)
        async with app.run_test(size=(70, 20)) as pilot:
            await start_live(pilot)
            await pilot.press("n")
            await settle(pilot, 1)
            text = screen_text(app)
            assert "The terminal is 70x20: the studio needs at least 80x24." in text
            assert "association map" not in text
            await pilot.resize_terminal(80, 24)  # growing the window brings the panels back
            await pilot.pause(0.3)
            await wait_until(pilot, lambda: "association map" in screen_text(app), timeout=10)
            assert "needs at least" not in screen_text(app)

    asyncio.run(go())


def test_open_play_starts_playing(tmp_path: Path) -> None:
    async def go() -> None:
        app = build_open_app([MAMBA], tasks=3, shots=2, seed=0, device="cpu", record_dir=tmp_path,
                             show_timing=False, play=True)
        async with app.run_test(size=(120, 40)) as pilot:
            assert isinstance(app.screen, LiveScreen)  # no picker
            await wait_until(pilot, lambda: app.frames_received >= 3)  # no key pressed
            assert str(app.screen.query_one("#status").content).startswith("[b]playing")

    asyncio.run(go())


def test_help_explains_every_panel_and_mark(tmp_path: Path) -> None:
    async def go() -> None:
        app = build_open_app([MAMBA], tasks=3, shots=2, device="cpu", record_dir=tmp_path, show_timing=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await start_live(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = " ".join(str(w.content) for w in app.screen.query("Static"))
            for needle in ("[b]example[/b]", "[b]accuracy, forgetting[/b]", "[b]state memory[/b]",
                           "[b]hidden-state norms[/b]", "[b]accuracy matrix[/b]", "[b]association map[/b]",
                           "Hidden attention: the same picture computed from Mamba's recurrence",
                           "Attention: the Transformer's weights", "^ marks the tokens of the question's own class",
                           "| marks where a new task began", "start / stop recording"):
                assert needle in text, needle

    asyncio.run(go())


def test_replay_offers_no_recording(tmp_path: Path) -> None:
    path = record_session([load_checkpoint(MAMBA)], EpisodeSpec(tasks=3, train_shots=2, seed=4, num_codes=100), 1,
                          tmp_path / "run.h5")

    async def go() -> None:
        app = build_replay_app(path, show_timing=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("n")
            await settle(pilot, 1)
            footer = screen_text(app).splitlines()[-1]
            assert "space play" in footer and "record" not in footer
            await pilot.press("r")  # a hidden key does nothing
            await pilot.pause()
            assert app.controls.recording_to is None and not list(tmp_path.glob("studio-*"))
            await pilot.press("question_mark")
            text = " ".join(str(w.content) for w in app.screen.query("Static"))
            assert "start / stop recording" not in text and "one step" in text

    asyncio.run(go())


def test_studio_and_replay_report_the_same_forgetting_continuously(tmp_path: Path) -> None:
    """Mamba, 4 tasks x 2 shots, seed 1: task 2 falls from 100% to 60% when task 3 is learned and stays
    there. After task 3, mean forgetting over tasks 1-2 is (0 + 0.4) / 2 = 20.0%; after task 4, task 4 is
    the newest, so it is (0 + 0.4 + 0) / 3 = 13.3% (the old studio averaged in the newest task: 10.0%).
    Between task ends the last value stays on screen."""
    spec = EpisodeSpec(tasks=4, train_shots=2, seed=1)
    path = record_session([load_checkpoint(MAMBA)], spec, 1, tmp_path / "run.h5")
    replay_figure = recording_summary(read_recording(path))[0]["forgetting"]
    assert f"{100 * replay_figure:.1f}%" == "13.3%"

    async def shown_forgetting(app: StudioApp, enter: bool) -> list[str]:
        seen = []
        async with app.run_test(size=(160, 50)) as pilot:
            if enter:
                await start_live(pilot)
            for step in range(1, 9):
                await pilot.press("n")
                await settle(pilot, step)
                panel = str(app.get_screen("live").query_one(AccuracyPanel).content)
                seen.append(re.search(r"forgetting (\S+)", panel).group(1))  # type: ignore[union-attr]
            if enter:  # the live studio's JSON export holds the same figure
                app.action_export_json()
        return seen

    live = asyncio.run(shown_forgetting(
        build_open_app([MAMBA], tasks=4, shots=2, seed=1, device="cpu", record_dir=tmp_path, show_timing=False), True))
    replayed = asyncio.run(shown_forgetting(build_replay_app(path, show_timing=False), False))
    # steps 1..8; tasks end at steps 2, 4, 6 and 8
    assert live == replayed == ["-", "0.0%", "0.0%", "0.0%", "0.0%", "20.0%", "20.0%", "13.3%"]
    exported = json.loads((tmp_path / "studio-episode0-step8.json").read_text())
    assert exported["learners"]["mamba"]["mean_forgetting"] == pytest.approx(replay_figure)
