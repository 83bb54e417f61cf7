"""What an evaluation run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass

from fewseg.refinement.options import InferenceOptions


@dataclass(frozen=True)
class EvaluationSettings:
    fold: str
    shots: int
    episodes: int
    size: int
    workers: int = 0  # data-loading processes (0: a loading thread)
    device: str = "cpu"
    progress: bool = True
    min_class_images: int = 0  # e.g. 6: the same classes for 1- and 5-shot evaluation
    # post-processing and test-time refinement of every prediction (None: the learner's own)
    inference: InferenceOptions | None = None
