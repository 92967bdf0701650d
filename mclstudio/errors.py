"""The errors that mean bad input (a missing file, a wrong format, an impossible request), each with a
one-line message; a command reports them as one `error: ...` line, and anything else is a bug.

Torch-free (it imports nothing), so that the command line can catch them without loading the layers
that raise them: data/, store/ (checkpoints, adapters), recording/ and files.py import their error
classes from here.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data request (unknown dataset, too many tasks, missing folder...). The message is one line."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used. The message is one line."""


class AdapterError(CheckpointError):
    """An adapter file that cannot be read or does not fit the checkpoint. The message is one line."""


class RecordingError(Exception):
    """A recording that cannot be read or used. The message is one line."""


class OutputError(Exception):
    """An output path that cannot be written. The message is one line."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError, OutputError, CheckpointError, RecordingError, ValueError, FloatingPointError, OSError,
)
"""What the command line reports as one `error: ...` line with exit code 2 (AdapterError is a
CheckpointError, DataError a ValueError)."""
