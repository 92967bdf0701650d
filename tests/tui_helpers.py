"""What the studio's failure tests share, whichever worker streams the models: the status line, the
notifications, and the full-disk recording scenario."""

from __future__ import annotations

from mclstudio.tui.app import StudioApp
from mclstudio.tui.headless import start_live, wait_until


def notes(app: StudioApp) -> list[tuple[str, str]]:
    """The app's notifications as (severity, message)."""
    return [(n.severity, n.message) for n in app._notifications]


def status(app: StudioApp) -> str:
    """The live screen's status line."""
    return str(app.screen.query_one("#status").content)


async def record_onto_a_full_disk(app: StudioApp, pilot) -> None:
    """Record while the episode's write fails with ENOSPC (planted by the caller): the recording stops
    with a notification and a truthful status, the stream goes on, the app quits cleanly."""
    await start_live(pilot)
    await pilot.press("r")
    assert "REC" in status(app)
    await pilot.press("plus", "plus", "plus", "space")  # the episode ends at step 6: the write fails
    await wait_until(pilot, lambda: app.frames_received >= 9)  # and the next episode streams on
    await pilot.press("space")
    await wait_until(pilot, lambda: "REC" not in status(app))
    assert "recording failed" in status(app) and app.controls.recording_to is None
    assert ("error", "recording stopped: OSError: [Errno 28] No space left on device (nothing written)") in notes(app)
    await pilot.press("q")
