"""The streaming engine: feed an episode to learners one example at a time and watch them learn."""

from mclstudio.engine.stream import (
    EVAL_MODES,
    EngineConfig,
    EpisodeTrace,
    Snapshot,
    StreamEngine,
    run_episode,
    same_class_pattern,
)

__all__ = ["EVAL_MODES", "EngineConfig", "EpisodeTrace", "Snapshot", "StreamEngine", "run_episode", "same_class_pattern"]
