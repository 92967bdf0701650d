"""The studio: a Textual app for watching meta-continual learners learn in context, live or replayed.

Layering: this package imports from data, learners, engine, recording and training only.
"""

from mclstudio.tui.app import StudioApp
from mclstudio.tui.feeds import Frame, LiveFeed, ReplayFeed

__all__ = ["StudioApp", "Frame", "LiveFeed", "ReplayFeed"]
