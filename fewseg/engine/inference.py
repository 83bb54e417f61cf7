"""The one place an evaluation turns a support set into a predictor: the reference loop
(fewseg.engine.protocol), the fast runner (fewseg.engine.runner) and the figures all call
:func:`evaluation_predictor`, so the inference options apply identically in each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewseg.engine.settings import EvaluationSettings
from fewseg.episodes.tensors import LabelledImages
from fewseg.learners.base import Learner, Predictor

if TYPE_CHECKING:
    from fewseg.engine.region_memo import RegionMemo


def evaluation_predictor(
    learner: Learner,
    support: LabelledImages,
    settings: EvaluationSettings,
    regions: RegionMemo | None = None,
) -> Predictor:
    """The learner adapted to ``support``; with ``settings.inference`` its predictions
    refined and upsampled as those options say (fewseg.refinement); ``regions``: the
    query images' superpixels, kept across episodes."""
    if settings.inference is None:
        return learner.adapt(support)
    from fewseg.refinement.pipeline import refined_adapt

    return refined_adapt(learner, support, settings.inference, keep_support=False, regions=regions)
