"""Learners: sequence models that learn in context. One interface (base.Learner), four models.

The registry (model name -> class) is in ``mclstudio.learners.registry``.
"""

from mclstudio.learners.base import Learner, LearnerConfig, LearnerOutput, State

__all__ = ["Learner", "LearnerConfig", "LearnerOutput", "State"]
