"""Failures inside the studio: an export or a recording that cannot be written is a notification and a
truthful status line, never a crash; the app keeps streaming and exits 0 on q. Write failures are
injected two ways: a folder nobody can write into, and a recording writer that raises OSError."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from mclstudio.tui.app import StudioApp
from mclstudio.tui.cli import build_open_app
from mclstudio.recording.playback import LiveFeed
from mclstudio.tui.headless import settle, start_live, wait_until

from tui_helpers import notes, record_onto_a_full_disk, status

ROOT = Path(__file__).resolve().parent.parent
MAMBA = str(ROOT / "checkpoints" / "mamba.pt")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def unwritable(tmp_path: Path):
    """A folder no file can be created in: a read-only folder (mode 555), or, for root (whom file modes
    do not stop), /sys, where creating a regular file is refused to everyone."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    yield folder
    folder.chmod(stat.S_IRWXU)


def app_for(record_dir: Path) -> StudioApp:
    # build_open_app checks only that the folder exists: writability is checked where the app writes
    return build_open_app([MAMBA], tasks=3, shots=2, seed=0, device="cpu", record_dir=record_dir,
                          show_timing=False)


def test_exports_into_an_unwritable_folder_notify_and_keep_running(unwritable: Path) -> None:
    async def go() -> StudioApp:
        app = app_for(unwritable)
        async with app.run_test(size=(160, 50)) as pilot:
            await start_live(pilot)
            await pilot.press("n")
            await settle(pilot, 1)
            app.action_export_svg()  # what the palette's "export: screenshot (SVG)" runs
            app.action_export_json()
            await pilot.pause()
            errors = [m for severity, m in notes(app) if severity == "error"]
            assert len(errors) == 2 and all(m.startswith("cannot export") for m in errors), notes(app)
            await pilot.press("n")  # the app still steps
            await settle(pilot, 2)
            assert "step 2/6" in str(app.screen.query_one("#example").content)
            await pilot.press("q")
        return app

    app = asyncio.run(go())
    assert app.return_code == 0
    assert not list(unwritable.glob("studio-*"))


def test_record_into_an_unwritable_folder_is_refused_truthfully(unwritable: Path) -> None:
    async def go() -> None:
        app = app_for(unwritable)
        async with app.run_test(size=(160, 50)) as pilot:
            await start_live(pilot)
            await pilot.press("r")
            await pilot.pause()
            await pilot.press("plus", "plus", "plus", "space")  # one whole episode (6 steps) at max speed
            await wait_until(pilot, lambda: app.frames_received >= 7)
            await pilot.press("space")
            await pilot.pause(0.2)
            assert "REC" not in status(app)
            assert app.controls.recording_to is None
            assert any(severity == "error" and ("cannot record" in m or "recording stopped" in m)
                       for severity, m in notes(app)), notes(app)
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(go())


def test_a_disk_error_while_recording_stops_the_recording_not_the_stream(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: LiveFeed, writer: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LiveFeed, "write_episode", full_disk)

    async def go() -> None:
        app = app_for(tmp_path)
        async with app.run_test(size=(160, 50)) as pilot:
            await record_onto_a_full_disk(app, pilot)
        assert app.return_code == 0

    asyncio.run(go())


def test_a_model_error_is_a_notification_and_the_status_stops_playing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_frames = LiveFeed.frames

    def failing_frames(self: LiveFeed):
        for n, frame in enumerate(real_frames(self)):
            if n == 2:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            yield frame

    monkeypatch.setattr(LiveFeed, "frames", failing_frames)

    async def go() -> None:
        app = app_for(tmp_path)
        async with app.run_test(size=(160, 50)) as pilot:
            await start_live(pilot)
            await pilot.press("space")
            await wait_until(pilot, lambda: any(severity == "error" for severity, _ in notes(app)))
            assert ("error", "RuntimeError: CUDA error: an illegal memory access was encountered") in notes(app)
            await wait_until(pilot, lambda: status(app).startswith("[b]paused"))
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(go())
