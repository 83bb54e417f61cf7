"""The evaluation protocol, plainly: the reference the fast runner (fewseg.engine.runner)
is tested against, and what to read to know what fewseg's numbers mean."""

from __future__ import annotations

import torch

from fewseg.data.source import SegmentationSource
from fewseg.engine import distributed
from fewseg.engine.inference import evaluation_predictor
from fewseg.engine.precision import autocast
from fewseg.engine.scoring import foreground_prediction
from fewseg.engine.settings import EvaluationSettings
from fewseg.episodes.sampler import EpisodePlan
from fewseg.episodes.tensors import load_resized_episode
from fewseg.learners.base import Learner
from fewseg.metrics import SegmentationScores


def score_plan_reference(
    learner: Learner, source: SegmentationSource, plan: EpisodePlan, settings: EvaluationSettings
) -> SegmentationScores:
    """Each episode of the fixed list in turn: adapt to its support set, predict its query
    at the evaluation size, add the prediction's foreground/background intersection and
    union to its class's (HSNet/PFENet protocol). ``score_at="original"``: the logits are
    resized to the query label's own size (padding cut off first) and scored against the
    label as it is; at the evaluation size, padding is ignored. A
    torchrun run's ranks take every world_size-th episode and add up their counts."""
    device = torch.device(distributed.local_device(settings.device))
    scores = SegmentationScores(plan.classes_used)
    learner.eval()
    for episode in distributed.shard(plan.episodes):
        tensors = load_resized_episode(
            source, episode, settings.size, settings.original_truth, settings.resize
        ).to(device)
        with autocast(settings.precision, device):
            predict = evaluation_predictor(learner, tensors.support, settings)
            with torch.no_grad():
                logits = predict(tensors.query.images)
        mask, ignore = tensors.scored_truth()
        prediction = foreground_prediction(logits, mask.shape[-2:], settings.resize)[0]
        scores.update(episode.class_index, prediction, mask.cpu(), ignore.cpu())
    return distributed.all_reduce_scores(scores)
