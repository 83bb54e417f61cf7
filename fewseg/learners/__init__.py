"""Learners: one file per algorithm, all behind :class:`Learner` and :data:`LEARNERS`."""

from fewseg.learners import (
    baseline,  # noqa: F401  (registers)
    finetune,  # noqa: F401  (registers)
    imaml,  # noqa: F401  (registers)
    lrd2,  # noqa: F401  (registers)
    maml,  # noqa: F401  (registers)
    probe,  # noqa: F401  (registers)
    protonet,  # noqa: F401  (registers)
    reptile,  # noqa: F401  (registers)
)
from fewseg.learners.base import LEARNERS, Learner, LearnerOptions, Predictor, build_learner

__all__ = ["LEARNERS", "Learner", "LearnerOptions", "Predictor", "build_learner"]
