"""The support-fitted linear probe (fewseg.models.probe) beside a correlation-model learner:
mIoU / FB-IoU / boundary IoU of the learner's own output, of the probe alone and of the
mean of their log-odds, on one evaluation's episodes (no refinements, at the learner's
image size). The probe is fitted on the learner's frozen backbone, at its layout's blocks,
whether or not the learner was trained with it as an input (a learner with ``--probe
mean`` already averages it into its own output).

``python -m fewseg.experiments.probe_mean --dataset SPEC --checkpoint DIR [--fold F]
[--shots K] [--episodes N] [--seed S] [--min-class-images M]``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from fewseg.data.source import SegmentationSource
from fewseg.engine.scoring import foreground_prediction
from fewseg.episodes.sampler import EpisodePlan, episode_plan
from fewseg.episodes.tensors import load_resized_episode
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner
from fewseg.metrics import SegmentationScores
from fewseg.models.segmenter import foreground_logit
from fewseg.models.upsample import bilinear_resize

VARIANTS = ("learner", "probe", "mean")


def probe_mean_scores(
    learner: Learner, source: SegmentationSource, plan: EpisodePlan, size: int
) -> dict[str, SegmentationScores]:
    """The scores of each of :data:`VARIANTS` over the plan's episodes."""
    tasks = getattr(learner, "tasks", None)
    if tasks is None:
        raise FewSegError(f"the probe needs a learner on the correlation model, got {learner.name}")
    learner.eval()
    scores = {v: SegmentationScores(plan.classes_used) for v in VARIANTS}
    with torch.no_grad():
        for episode in plan.episodes:
            tensors = load_resized_episode(source, episode, size)
            support, query = tensors.support, tensors.query
            own = foreground_logit(learner.adapt(support)(query.images))[:, None]
            fitted = tasks.model.fit_probe(support.images, support.masks, support.ignore)
            probe = tasks.model.probe_map(query.images, fitted)
            probe = bilinear_resize(probe[:, None], own.shape[-2:])
            log_odds = {"learner": own, "probe": probe, "mean": 0.5 * (own + probe)}
            for name, value in log_odds.items():
                prediction = foreground_prediction(value)
                scores[name].update(
                    episode.class_index, prediction[0], query.masks[0], query.ignore[0]
                )
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    from fewseg.data.spec import open_source
    from fewseg.engine.loading import load_learner

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--fold", default=None)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-class-images", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        source = open_source(args.dataset)
        loaded = load_learner(args.checkpoint, "cpu")
        fold = args.fold or source.default_fold
        plan = episode_plan(
            source, source.fold_split(fold).test, args.shots, args.episodes, args.seed,
            args.min_class_images,
        )  # fmt: skip
        size = loaded.image_size(None, source.default_size)
        scores = probe_mean_scores(loaded.learner, source, plan, size)
    except FewSegError as error:
        raise SystemExit(f"error: {error}") from None
    for name, s in scores.items():
        print(
            f"{name:8s} mIoU {100 * s.miou():.2f}  FB-IoU {100 * s.fbiou():.2f}  "
            f"boundary IoU {100 * s.boundary_iou():.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
