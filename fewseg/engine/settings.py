"""What an evaluation run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass

from fewseg.errors import FewSegError
from fewseg.refinement.options import InferenceOptions

SCORE_AT = ("resized", "original")
"""``resized``: predictions scored against the labels squashed to the evaluation size (the
default); ``original``: the logits resized to each query label's own size and scored
there (HSNet's ``use_original_imgsize``)."""

MISSING_CLASSES = ("skip", "zero")
"""A usable test class that no episode drew: left out of mIoU (``skip``, the default) or
counted as IoU 0 (``zero``: HSNet's meter averages over every class of the fold)."""


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
    score_at: str = "resized"  # SCORE_AT
    missing_classes: str = "skip"  # MISSING_CLASSES
    precision: str = "fp32"  # fewseg.engine.precision: fp32, bf16 or fp16 (autocast)
    # post-processing and test-time refinement of every prediction (None: the learner's own)
    inference: InferenceOptions | None = None

    def __post_init__(self) -> None:
        if self.score_at not in SCORE_AT:
            raise FewSegError(f"score_at {self.score_at!r}: expected one of {', '.join(SCORE_AT)}")
        if self.missing_classes not in MISSING_CLASSES:
            raise FewSegError(
                f"missing_classes {self.missing_classes!r}: expected one of "
                f"{', '.join(MISSING_CLASSES)}"
            )

    @property
    def resize(self) -> str:
        """How images reach the evaluation size: squash or pad (the inference options')."""
        return self.inference.resize if self.inference is not None else "squash"

    @property
    def original_truth(self) -> bool:
        return self.score_at == "original"
