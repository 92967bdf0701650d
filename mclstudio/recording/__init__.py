"""Session recordings: HDF5 files of streamed episodes, and what can be done with them (replay, verify)."""

from mclstudio.recording.hdf5 import (
    SCHEMA_VERSION,
    LearnerIdentity,
    RecordedEpisode,
    Recording,
    RecordingError,
    RecordingWriter,
    read_recording,
)
from mclstudio.recording.session import (
    VerifyReport,
    default_rows_queries,
    record_session,
    recording_summary,
    rerun,
    summarize,
    verify,
)

__all__ = [
    "SCHEMA_VERSION", "LearnerIdentity", "RecordedEpisode", "Recording", "RecordingError", "RecordingWriter",
    "read_recording", "VerifyReport", "default_rows_queries", "record_session", "recording_summary", "rerun",
    "summarize", "verify",
]
