"""How well the presence score separates queries that contain the support's class from
queries that do not: an AUROC over one evaluation's episodes.

Each episode of the plan gives a *present* query (its own) and an *absent* one: the query
of the next episode (in plan order, wrapping) whose image has no pixel of this class,
scored against the same support. ``python -m fewseg.experiments.presence --dataset SPEC
[--fold F] [--shots K] [--episodes N] [--learner NAME | --checkpoint DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewseg.data.source import SegmentationSource
from fewseg.episodes.sampler import Episode, EpisodePlan, episode_plan
from fewseg.episodes.tensors import load_resized_episode
from fewseg.learners.base import Learner
from fewseg.metrics import auroc
from fewseg.refinement.options import InferenceOptions
from fewseg.refinement.pipeline import refined_adapt


@dataclass(frozen=True)
class PresenceResult:
    present: tuple[float, ...]
    absent: tuple[float, ...]

    @property
    def auroc(self) -> float:
        return auroc(self.present, self.absent)

    def summary(self) -> str:
        return (
            f"presence AUROC {100 * self.auroc:.1f} over {len(self.present)} present and "
            f"{len(self.absent)} absent queries (median score {statistics.median(self.present):.3f}"
            f" present, {statistics.median(self.absent):.3f} absent)"
        )


def absent_partner(source: SegmentationSource, plan: EpisodePlan, index: int) -> Episode | None:
    """The first later episode (wrapping) whose query image has no pixel of episode
    ``index``'s class; None when every query has it."""
    episodes = plan.episodes
    class_index = episodes[index].class_index
    containing = set(source.images_of(class_index))
    for step in range(1, len(episodes)):
        other = episodes[(index + step) % len(episodes)]
        if (
            other.query not in containing
            and not source.load_masks(other.query, class_index)[0].any()
        ):
            return other
    return None


def presence_scores_of_plan(
    learner: Learner,
    source: SegmentationSource,
    plan: EpisodePlan,
    size: int,
    options: InferenceOptions,
) -> PresenceResult:
    present: list[float] = []
    absent: list[float] = []
    learner.eval()
    for index, episode in enumerate(plan.episodes):
        partner = absent_partner(source, plan, index)
        if partner is None:
            continue
        tensors = load_resized_episode(source, episode, size)
        other = load_resized_episode(source, partner, size)
        predictor = refined_adapt(learner, tensors.support, options)
        queries = torch.cat([tensors.query.images, other.query.images])
        scores = predictor.presence(queries).tolist()
        present.append(scores[0])
        absent.append(scores[1])
    return PresenceResult(tuple(present), tuple(absent))


def main(argv: Sequence[str] | None = None) -> int:
    from fewseg.data.spec import open_source
    from fewseg.engine.loading import load_learner

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--fold", default=None)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--refine", default="none", help="as fewseg evaluate --refine")
    learner = parser.add_mutually_exclusive_group()
    learner.add_argument("--learner", default=None)
    learner.add_argument("--checkpoint", default=None)
    args = parser.parse_args(argv)
    source = open_source(args.dataset)
    loaded = load_learner(args.checkpoint or args.learner or "baseline", "cpu")
    fold = args.fold or source.default_fold
    plan = episode_plan(source, source.fold_split(fold).test, args.shots, args.episodes, args.seed)
    size = loaded.image_size(args.size, source.default_size)
    torch.manual_seed(args.seed)
    result = presence_scores_of_plan(
        loaded.learner, source, plan, size, InferenceOptions(edges="none", refine=args.refine)
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
