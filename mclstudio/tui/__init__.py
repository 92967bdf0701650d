"""The studio: a Textual app for watching meta-continual learners learn in context, live or replayed.

Layering: this package imports from data, engine, recording (its feeds: recording.playback) and the
model store only; nothing below imports it. Reading order: app (the feed's lifecycle, global actions),
messages, player (controls and the worker's loop), screens (picker, live, help), widgets (the panels),
palette, exports.
"""

from mclstudio.tui.app import StudioApp

__all__ = ["StudioApp"]
