"""mclstudio: a terminal studio for meta-continual learning.

Layers, each importing only from the ones before it:
data -> learners -> training and engine -> recording -> cli and tui.
"""

__version__ = "0.1.0"
