"""The smallest training run the tests use: a convnet on tiny synthetic images."""

from __future__ import annotations

from typing import Any

TINY_TRAINING = {
    "dataset": "synthetic:images=8,size=64",
    "backbone": "convnet",
    "hidden": 8,
    "inner_steps": 1,
    "meta_batch": 2,
    "val_every": 0,
}


def tiny_values(learner: str = "maml", **overrides: Any) -> dict[str, Any]:
    """:data:`TINY_TRAINING` for ``learner``: the training options and those of the
    learner's own options it has, then ``overrides``."""
    from fewseg.engine.config import TRAIN_FIELDS
    from fewseg.learners import LEARNERS
    from fewseg.options import field_names

    known = TRAIN_FIELDS | field_names(LEARNERS.get(learner).Options)
    return {
        **{k: v for k, v in TINY_TRAINING.items() if k in known},
        "learner": learner,
        **overrides,
    }


def tiny_options(learner: str = "maml", **overrides: Any) -> dict[str, Any]:
    """The learner's own options of :func:`tiny_values` (what ``build_learner`` takes)."""
    from fewseg.learners import LEARNERS
    from fewseg.options import field_names

    own = field_names(LEARNERS.get(learner).Options)
    return {k: v for k, v in tiny_values(learner, **overrides).items() if k in own}
