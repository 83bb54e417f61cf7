"""Episodes: deterministic task lists and the tensors of one task."""

from fewseg.episodes.sampler import Episode, EpisodePlan, draw_episode, episode_plan
from fewseg.episodes.tensors import EpisodeTensors, LabelledImages, load_episode

__all__ = [
    "Episode",
    "EpisodePlan",
    "EpisodeTensors",
    "LabelledImages",
    "draw_episode",
    "episode_plan",
    "load_episode",
]
