"""The registry of learners: model name -> class, and building from a config."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from mclstudio.learners.attention import (
    LinearTransformerLearner,
    PerformerLearner,
    TransformerLearner,
)
from mclstudio.learners.base import Learner, LearnerConfig
from mclstudio.learners.longhorn import LonghornLearner
from mclstudio.learners.mamba import MambaLearner
from mclstudio.learners.protonet import ProtoNetLearner

LEARNERS: dict[str, type[Learner]] = {
    "mamba": MambaLearner,
    "transformer": TransformerLearner,
    "linear_transformer": LinearTransformerLearner,
    "performer": PerformerLearner,
    "longhorn": LonghornLearner,
    "protonet": ProtoNetLearner,
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
    config_class = LEARNERS[model].config_class
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} does not apply to model {model!r} (its settings: {', '.join(sorted(known))})")
    return config_class(**overrides)


def build_learner(config: LearnerConfig) -> Learner:
    return LEARNERS[config.model](config)
