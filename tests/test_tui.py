"""The studio app: Pilot tests that press the keys and read what is shown, replay of a recording, and
one-line errors for bad paths. Small episodes (few tasks and shots) keep every test to a few seconds."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.recording.hdf5 import read_recording
from mclstudio.recording.session import default_rows_queries, record_session
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.tui.app import StudioApp
from mclstudio.tui.cli import build_open_app, build_replay_app
from mclstudio.tui.headless import settle, start_live, wait_until
from mclstudio.tui.screens import HelpScreen, LiveScreen, PickerScreen
from mclstudio.tui.widgets import AccuracyPanel, ExampleView, StatsPanel

from cli_helpers import run_cli


ROOT = Path(__file__).resolve().parent.parent
MAMBA = str(ROOT / "checkpoints" / "mamba.pt")
TRANSFORMER = str(ROOT / "checkpoints" / "transformer.pt")
SIZE = (160, 50)
pytestmark = pytest.mark.timeout(120)


def shown(app: StudioApp, widget: type) -> str:
    return str(app.get_screen("live").query_one(widget).content)


def small_app(tmp_path: Path, *checkpoints: str) -> StudioApp:
    return build_open_app(list(checkpoints) or [MAMBA], tasks=3, shots=2, seed=0, device="cpu",
                          record_dir=tmp_path, show_timing=False)


def test_enter_starts_and_n_steps(tmp_path: Path) -> None:
    async def go() -> None:
        app = small_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            assert isinstance(app.screen, PickerScreen)
            await start_live(pilot)
            await pilot.press("n", "right")
            await settle(pilot, 2)
            assert app.frames_received == 2  # paused: exactly the steps asked for
            assert "step 2/6" in shown(app, ExampleView)
            assert "task 1/3" in shown(app, ExampleView)
            assert "acc" in shown(app, AccuracyPanel)
            assert "80.0 KiB" in shown(app, StatsPanel) and "(hidden)" in shown(app, StatsPanel)

    asyncio.run(go())


def test_space_plays_and_pauses_speed_keys(tmp_path: Path) -> None:
    async def go() -> None:
        app = small_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            status = lambda: str(app.screen.query_one("#status").content)  # noqa: E731
            await pilot.press("plus", "plus")
            assert "speed max" in status()
            await pilot.press("minus")
            assert "speed 20" in status()
            await pilot.press("space")
            assert "playing" in status()
            await wait_until(pilot, lambda: app.frames_received >= 3)
            await pilot.press("space")
            assert "paused" in status()
            await pilot.pause(0.3)
            seen = app.frames_received
            await pilot.pause(0.5)
            assert app.frames_received == seen  # paused means no more steps

    asyncio.run(go())


def test_record_writes_the_record_schema(tmp_path: Path) -> None:
    async def go() -> Path:
        app = small_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("r")
            assert "REC" in str(app.screen.query_one("#status").content)
            path = app.controls.recording_to
            assert path is not None
            await pilot.press("plus", "plus", "plus", "space")  # max speed; one episode is 6 steps
            await wait_until(pilot, lambda: app.recorded_episodes >= 1)
            await pilot.press("space", "r")
            assert "recorded" in str(app.screen.query_one("#status").content)
            return path

    path = asyncio.run(go())
    rec = read_recording(path)
    assert [ident.name for ident in rec.learners] == ["mamba"]
    assert len(rec.episodes) >= 1
    spec = rec.episodes[0].spec
    assert (spec.tasks, spec.train_shots, spec.seed) == (3, 2, 0)
    assert rec.engine_config.rows_queries == default_rows_queries(spec)
    # the same data `mclstudio record` writes for this episode
    ref = read_recording(record_session([load_checkpoint(MAMBA)], spec, 1, tmp_path / "ref.h5"))
    a, b = rec.episodes[0].traces["mamba"], ref.episodes[0].traces["mamba"]
    assert (a.predictions_array() == b.predictions_array()).all()
    assert a.eval_steps == b.eval_steps and a.rows_steps == b.rows_steps


def test_live_feed_computes_rows_for_the_map_and_records_every_learners(tmp_path: Path) -> None:
    """The studio's feed computes association rows as the stream goes only for the learners the map shows
    (Mamba and the Transformer here, not Longhorn), or for all while recording; an episode written to a
    recording holds every learner's rows all the same, equal to what `mclstudio record` writes."""
    from mclstudio.recording.playback import LiveFeed, map_learners

    paths = [MAMBA, str(ROOT / "checkpoints" / "longhorn.pt"), TRANSFORMER]
    checkpoints = [load_checkpoint(p) for p in paths]
    spec = EpisodeSpec(tasks=3, train_shots=2, seed=0, num_codes=100)
    feed = LiveFeed(checkpoints, spec)
    assert map_learners(feed.names, feed.models) == ["mamba", "transformer"]
    assert map_learners(["mamba", "protonet"], {"mamba": "mamba", "protonet": "protonet"}) == ["mamba", "protonet"]
    frames = feed.frames()
    episode = [next(frames) for _ in range(6)]
    with_rows = {s.learner for f in episode for s in f.snapshots if s.rows is not None}
    assert with_rows == {"mamba", "transformer"} and all(f.snapshots[1].rows is None for f in episode)
    feed.write_episode(feed.start_recording(tmp_path / "studio.h5"))  # Longhorn's rows computed now
    feed.recording = True  # (the player sets it while it records): every learner's rows as the stream goes
    after_task_end = [next(frames) for _ in range(2)][-1]
    assert all(s.rows is not None for s in after_task_end.snapshots)
    got = read_recording(tmp_path / "studio.h5").episodes[0]
    ref = read_recording(record_session(checkpoints, spec, 1, tmp_path / "ref.h5")).episodes[0]
    for name in feed.names:
        a, b = got.traces[name], ref.traces[name]
        assert a.rows_steps == b.rows_steps == [1, 3, 5]
        np.testing.assert_array_equal(np.stack(a.rows), np.stack(b.rows))
        np.testing.assert_array_equal(a.predictions_array(), b.predictions_array())


def test_fused_step_choice_reaches_the_engine(tmp_path: Path) -> None:
    """open --fused-step (build_open_app's fused_step) is the engine setting of every episode the studio
    starts; the default is auto (CUDA graphs on a GPU); a bad value is refused before the app starts."""
    assert small_app(tmp_path).fused_step == "auto"

    async def go() -> None:
        app = build_open_app([MAMBA], tasks=3, shots=2, seed=0, device="cpu", record_dir=tmp_path,
                             fused_step="uncaptured")  # the engine's test mode: the fused body on the CPU
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("n")
            await settle(pilot, 1)
            assert app.feed.config.fused_step == "uncaptured"
            assert app.feed.engine._fused[0] is not None  # mamba streams through its FusedStep

    asyncio.run(go())
    with pytest.raises(ValueError, match="fused_step"):
        build_open_app([MAMBA], device="cpu", record_dir=tmp_path, fused_step="always")


def test_switch_interval_is_shortened_only_for_gpu_learners(tmp_path: Path) -> None:
    """On a GPU the studio shortens Python's thread switch interval (the worker and the UI share the
    interpreter lock) and puts it back when it stops; on the CPU it leaves it alone."""
    from mclstudio.tui.app import GPU_SWITCH_INTERVAL_S, switch_interval_for

    assert switch_interval_for("cuda") == switch_interval_for("cuda:1") == GPU_SWITCH_INTERVAL_S == 0.001
    assert switch_interval_for("cpu") is None
    before = sys.getswitchinterval()

    async def go() -> None:
        app = small_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            assert sys.getswitchinterval() == before  # CPU learners: Python's own
            app._switch_interval_before, changed = before, 0.002  # as on_mount does for GPU learners
            sys.setswitchinterval(changed)
            await pilot.press("q")
            await pilot.pause()

    asyncio.run(go())
    assert sys.getswitchinterval() == before  # restored when the app stopped


def test_help_screen_and_quit(tmp_path: Path) -> None:
    async def go() -> None:
        app = small_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = " ".join(str(w.content) for w in app.screen.query("Static"))
            for needle in ("play / pause", "one step", "recording to HDF5", "quit", "command palette"):
                assert needle in text
            await pilot.press("escape")
            assert isinstance(app.screen, LiveScreen)
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0

    asyncio.run(go())


def test_association_map_with_mamba_and_transformer(tmp_path: Path) -> None:
    async def go() -> None:
        app = small_app(tmp_path, MAMBA, TRANSFORMER)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("n", "n")  # task 1 ends after 2 steps: rows are computed then
            await settle(pilot, 2)
            text = str(app.screen.query_one("#assoc").content)
            assert "mamba: hidden attention (after step 2)" in text
            assert "transformer: attention (after step 2)" in text
            assert "\n^^^^\n" in text  # the query's same-class tokens (task 1: steps 1 and 2) are marked
            assert text.endswith("weight low ████████ high   ^ same class as the query   | task boundary")
            await pilot.press("tab")
            assert app.selected == "transformer"

    asyncio.run(go())


def test_replay_tui_plays_a_recording(tmp_path: Path) -> None:
    spec = EpisodeSpec(tasks=3, train_shots=2, seed=4, num_codes=100)
    path = record_session([load_checkpoint(MAMBA)], spec, 1, tmp_path / "run.h5")

    async def go() -> None:
        app = build_replay_app(path, show_timing=False)
        async with app.run_test(size=SIZE) as pilot:
            assert isinstance(app.screen, LiveScreen)  # no picker, no models
            await pilot.press("n", "n", "n")
            await settle(pilot, 3)
            assert "step 3/6" in shown(app, ExampleView)
            assert app.frame is not None and app.frame.image is not None  # rebuilt from the dataset
            await pilot.press("r")  # nothing to record: a warning, not a crash
            await pilot.pause()

    asyncio.run(go())


@pytest.mark.parametrize("args, needle", [
    (["open", "missing.pt"], "checkpoint not found"),
    (["replay", "missing.h5", "--tui"], "recording not found"),
    (["open", MAMBA, "--tasks", "500"], "label codes"),
])
def test_bad_paths_one_line_exit_2(capsys, args: list[str], needle: str) -> None:
    code, _, err = run_cli(capsys, *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


def test_bad_checkpoint_file(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "open", MAMBA, str(bad))
    assert code == 2 and "not a readable PyTorch checkpoint" in err and "Traceback" not in err


def test_picker_shows_a_bad_checkpoint_path_inside_the_app(tmp_path: Path) -> None:
    async def go() -> None:
        app = small_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            app.screen.query_one("#checkpoints").value = str(tmp_path / "nope.pt")
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, PickerScreen)  # still there, with the reason
            assert "checkpoint not found" in str(app.screen.query_one("#picker-error").content)
            app.screen.query_one("#checkpoints").value = f"{MAMBA} {TRANSFORMER}"
            await pilot.pause(0.4)  # a Button ignores a second press during its 0.2 s press effect
            await start_live(pilot)
            assert app.learner_names == ["mamba", "transformer"]

    asyncio.run(go())


def test_picker_switches_checkpoints_with_their_adapters(tmp_path: Path) -> None:
    # the shipped adapters were trained on the previous checkpoints (checkpoints/previous/)
    adapter = str(ROOT / "checkpoints" / "previous" / "adapters" / "mamba-omniglot-mini-inverted-r4.pt")
    MAMBA = str(ROOT / "checkpoints" / "previous" / "mamba.pt")

    async def go() -> None:
        app = build_open_app([MAMBA], tasks=3, shots=2, seed=0, device="cpu", record_dir=tmp_path,
                             show_timing=False, adapters=[adapter])
        async with app.run_test(size=SIZE) as pilot:
            assert app.screen.query_one("#adapters").value == adapter  # the picker shows what is applied
            app.screen.query_one("#checkpoints").value = f"{MAMBA} {MAMBA}"
            app.screen.query_one("#adapters").value = str(tmp_path / "nope.pt")
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, PickerScreen)
            assert "adapter not found" in str(app.screen.query_one("#picker-error").content)
            app.screen.query_one("#adapters").value = adapter
            await pilot.pause(0.4)
            await start_live(pilot)
            assert app.learner_names == ["mamba+mamba-omniglot-mini-inverted-r4", "mamba"]
            assert app.adapter_paths() == [adapter]

    asyncio.run(go())


def test_command_palette_switch_and_export(tmp_path: Path) -> None:
    async def go() -> None:
        app = small_app(tmp_path, MAMBA, TRANSFORMER)
        async with app.run_test(size=SIZE) as pilot:
            await start_live(pilot)
            await pilot.press("n", "n", "right_square_bracket")
            await settle(pilot, 2)
            assert "map 2/3: a query of task 2" in str(app.screen.query_one("#assoc").content)
            for command, done in (("switch: show transformer", lambda: app.selected == "transformer"),
                                  ("export: screenshot", lambda: any(tmp_path.glob("*.svg")))):
                await pilot.press("ctrl+p")
                await pilot.pause(0.2)
                await pilot.press(*command)
                await pilot.pause(0.5)
                await pilot.press("enter")
                await wait_until(pilot, done, timeout=10)
                await wait_until(pilot, lambda: isinstance(app.screen, LiveScreen), timeout=10)

    asyncio.run(go())
