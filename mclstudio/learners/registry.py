"""The registry of learners: model name -> class, and building from a config."""

from __future__ import annotations

from typing import Any

from mclstudio.learners.attention import (
    LinearTransformerLearner,
    PerformerLearner,
    TransformerLearner,
)
from mclstudio.learners.base import Learner, LearnerConfig
from mclstudio.learners.mamba import MambaLearner

LEARNERS: dict[str, type[Learner]] = {
    "mamba": MambaLearner,
    "transformer": TransformerLearner,
    "linear_transformer": LinearTransformerLearner,
    "performer": PerformerLearner,
}


def config_from_dict(d: dict[str, Any]) -> LearnerConfig:
    """Rebuild a config from ``LearnerConfig.to_dict()`` output (its "model" key picks the class)."""
    name = d.get("model")
    if name not in LEARNERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(LEARNERS)}")
    return LEARNERS[name].config_class.from_dict(d)


def make_config(model: str, **overrides: Any) -> LearnerConfig:
    """A model's default config with some fields changed (unknown fields are an error)."""
    if model not in LEARNERS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(LEARNERS)}")
    return LEARNERS[model].config_class(**overrides)


def build_learner(config: LearnerConfig) -> Learner:
    return LEARNERS[config.model](config)
