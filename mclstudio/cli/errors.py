"""The errors a command reports as one line (anything else is a bug)."""

from mclstudio.data import DataError
from mclstudio.training.checkpoint import CheckpointError

ERROR_TYPES: tuple[type[BaseException], ...] = (DataError, CheckpointError, ValueError, FloatingPointError, OSError)
