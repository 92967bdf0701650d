"""Driving the studio headless (Textual's Pilot): what the tests, the screenshots and the frame-rate
benchmark all do. The worker thread and the redraw timer need real time, so these wait by polling."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from mclstudio.tui.screens import LiveScreen


async def wait_until(pilot: Pilot, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the app run until cond() holds; AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the app"
        await pilot.pause(0.05)


async def start_live(pilot: Pilot) -> None:
    """Enter on the episode picker (its defaults start the episode), then wait for the live view."""
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, LiveScreen))


async def settle(pilot: Pilot, frames: int, timeout: float = 30.0) -> None:
    """Wait for ``frames`` frames from the worker and for the redraw that shows the last one."""
    app = pilot.app
    await wait_until(pilot, lambda: app.frames_received >= frames, timeout)  # type: ignore[attr-defined]
    await wait_until(pilot, lambda: not app.live.dirty, timeout)  # type: ignore[attr-defined]
    await pilot.pause()


def screen_text(app: App) -> str:
    """The screen as plain text, one line per terminal row (what a user reads; the tests check labels)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, legacy_windows=False,
                      safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()
