"""mclstudio: a terminal studio for meta-continual learning.

Layers, each importing only from its own and the ones before it (docs/architecture.md; checked by
tests/test_architecture.py):
errors, choices, formatting, files, metrics, precision -> data -> learners -> store -> training and
engine -> recording -> cli and tui.
"""

__version__ = "0.1.0"
