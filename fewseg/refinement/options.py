"""What is done to a learner's inputs and logits at inference, whichever the learner: the
options.

Torch-free (the command line builds its flags from them without importing torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fewseg.errors import FewSegError
from fewseg.options import as_dict, option

EDGES = ("guided", "superpixels", "guided+superpixels", "none")
RESIZE_MODES = ("squash", "pad")  # fewseg.episodes.transforms.resize_transform
REFINEMENTS = ("nearest", "ssp", "repri")
SHOT_COMBINATIONS = ("mean", "max")


@dataclass(frozen=True)
class InferenceOptions:
    """Pre- and post-processing and test-time refinement of any learner's predictions."""

    resize: str = option(
        "squash",
        "how images reach the model's square size: squash (aspect ratio lost; the "
        "benchmark protocol's) or pad (longer side to the size, aspect ratio kept, the "
        "rest padded and ignored)",
    )

    edges: str = option(
        "guided+superpixels",
        "edge-aware upsampling: guided (a guided filter with the image as guide snaps the "
        "mask's edges to the image's), superpixels (each superpixel of the image takes its "
        "pixels' mean probability), guided+superpixels (the mean of the two's log-odds) or "
        "none (bilinear, the learner's own)",
    )
    edge_radius: int = option(64, "guided filter window radius in pixels at 400x400")
    edge_eps: float = option(1e-3, "guided filter regularisation (larger: smoother)")
    superpixel_scale: float = option(
        300.0, "Felzenszwalb superpixels' scale for the superpixel edges (larger: larger regions)"
    )
    weak_regions: float = option(
        0.3,
        "after the edges, drop each connected region of the mask whose mean foreground "
        "log-odds is below this fraction of the strongest region's (0: keep every region)",
    )
    refine: str = option(
        "auto",
        "test-time refinement, comma-separated, applied in order: auto (the default: "
        "nearest when the learner has image features, as every built-in learner does; "
        "else none), nearest (the mean with "
        "class-balanced nearest-neighbour matching of the query's features to the "
        "support's labelled cells), ssp (self-support prototypes from confident query "
        "pixels), repri (transductive, foreground-size prior); none: off",
    )
    flip: bool = option(
        False,
        "test-time augmentation: predict the query and its mirror image and average the two "
        "log-odds (twice the query's encoding)",
    )
    zoom: float = option(
        1.2,
        "test-time multi-scale: also predict the query enlarged by this factor and average "
        "the log-odds at its size; 1: off",
    )
    combine_shots: str = option(
        "mean",
        "how the refinements' support prototypes combine K shots: mean, or max (each "
        "query pixel matched to its nearest shot)",
    )
    min_presence: float = option(
        0.0,
        "below this presence score (0..1: how alike the query's predicted region is to the "
        "support's foreground) the mask is empty; 0: never",
    )

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise FewSegError(
                f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}"
            )
        if self.edges not in EDGES:
            raise FewSegError(f"edges must be one of {', '.join(EDGES)}, got {self.edges!r}")
        if self.edge_radius < 1:
            raise FewSegError(f"edge radius must be >= 1, got {self.edge_radius}")
        if not self.superpixel_scale > 0:
            raise FewSegError(f"superpixel scale must be > 0, got {self.superpixel_scale}")
        if not self.edge_eps > 0:
            raise FewSegError(f"edge eps must be > 0, got {self.edge_eps}")
        if not 1 <= self.zoom <= 4:
            raise FewSegError(f"zoom must be in [1, 4], got {self.zoom}")
        if not 0 <= self.weak_regions <= 1:
            raise FewSegError(f"weak-regions must be in [0, 1], got {self.weak_regions}")
        names = self.named_refinements
        alone = [r for r in names if r in ("auto", "none")]
        if alone and len(names) > 1:
            raise FewSegError(
                f"refinement {alone[0]!r} stands alone, not in a list: got {self.refine!r}"
            )
        unknown = [r for r in self.refinements if r not in REFINEMENTS]
        if unknown:
            raise FewSegError(
                f"unknown refinement {unknown[0]!r} (known: {', '.join(REFINEMENTS)}, none, auto)"
            )
        if self.combine_shots not in SHOT_COMBINATIONS:
            raise FewSegError(
                f"combine-shots must be one of {', '.join(SHOT_COMBINATIONS)}, "
                f"got {self.combine_shots!r}"
            )
        if not 0 <= self.min_presence <= 1:
            raise FewSegError(f"min-presence must be in [0, 1], got {self.min_presence}")

    @property
    def named_refinements(self) -> tuple[str, ...]:
        """``refine`` as written, split at its commas (``auto`` and ``none`` kept)."""
        return tuple(r.strip() for r in self.refine.split(",") if r.strip())

    @property
    def refinements(self) -> tuple[str, ...]:
        """The refinements in order (``auto``: nearest; the pipeline drops it for a learner
        without image features)."""
        names = self.named_refinements
        if names == ("auto",):
            return ("nearest",)
        return () if names == ("none",) else names

    @property
    def uses_guided_filter(self) -> bool:
        return self.edges in ("guided", "guided+superpixels")

    @property
    def uses_superpixels(self) -> bool:
        """Whether the edges vote on the query's superpixels (worth memoising)."""
        return self.edges in ("superpixels", "guided+superpixels")

    @property
    def automatic(self) -> bool:
        """Whether the refinements are the default's (left out where they cannot apply)."""
        return self.refine.strip() == "auto"

    @property
    def needs_support(self) -> bool:
        """Whether predictions need the support set itself (its features), not only the
        learner's predictor: a refinement, or a presence threshold."""
        return bool(self.refinements) or self.min_presence > 0

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


PLAIN = InferenceOptions(edges="none", refine="none", weak_regions=0.0, zoom=1.0)
"""The learner's own predictions, untouched."""
