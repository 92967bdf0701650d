"""Session recordings: HDF5 files of streamed episodes, and what can be done with them (replay, verify,
re-run with other learners). ``recording.playback`` turns live learners or a recording into frames for
the studio."""

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
    REPLAY_CSV_HEADER,
    VerifyReport,
    default_rows_queries,
    record_session,
    recording_summary,
    replay_csv_rows,
    rerun,
    rerun_with,
    summarize,
    verify,
)

__all__ = [
    "SCHEMA_VERSION", "LearnerIdentity", "RecordedEpisode", "Recording", "RecordingError", "RecordingWriter",
    "read_recording", "REPLAY_CSV_HEADER", "VerifyReport", "default_rows_queries", "record_session",
    "recording_summary", "replay_csv_rows", "rerun", "rerun_with", "summarize", "verify",
]
