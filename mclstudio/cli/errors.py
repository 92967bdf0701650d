"""The errors a command reports as one line (anything else is a bug)."""

from mclstudio.data import DataError
from mclstudio.files import OutputError
from mclstudio.recording.hdf5 import RecordingError
from mclstudio.store.checkpoint import CheckpointError

ERROR_TYPES: tuple[type[BaseException], ...] = (
    DataError, OutputError, CheckpointError, RecordingError, ValueError, FloatingPointError, OSError,
)
