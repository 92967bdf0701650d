"""The studio's command palette entries (ctrl+p). The app says which commands there are
(``palette_commands``); this provider only matches them against what is typed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from textual.command import Hit, Hits, Provider


@runtime_checkable
class HasPaletteCommands(Protocol):
    def palette_commands(self) -> list[tuple[str, Callable[[], object], str]]:
        """(text, callback, help) of every command available now."""
        ...


class StudioCommands(Provider):
    """open (a new episode), switch (the learner shown), export (SVG, JSON): as the app offers them."""

    async def search(self, query: str) -> Hits:
        if not isinstance(self.app, HasPaletteCommands):
            return
        matcher = self.matcher(query)
        for text, callback, help_text in self.app.palette_commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)
