"""The studio's screens: the episode picker (picker.py), the live view (live.py) and the help screen
(help.py). Each takes what it shows in its constructor and reaches the app only through messages and
Textual's own actions."""

from mclstudio.tui.screens.help import HelpScreen
from mclstudio.tui.screens.live import LiveScreen, layout_mode
from mclstudio.tui.screens.picker import PickerScreen

__all__ = ["HelpScreen", "LiveScreen", "PickerScreen", "layout_mode"]
