"""Few-shot segmentation metrics (HSNet/PFENet protocol) and Boundary IoU.

Per test class, foreground intersection and union are summed over all episodes of that
class, and IoU_c = I_c / U_c; mIoU is the mean over classes. FB-IoU pools foreground and
background intersection/union over every episode of the fold. Ignored pixels count in
neither.

Boundary IoU (Cheng et al., CVPR 2021) scores only the band along each mask's contour:
the boundary region of a mask is its pixels within distance d of a pixel outside it (the
image border counts as outside), d = 2% of the image diagonal rounded (at least 1), the
distance measured as their reference code's repeated 3x3 erosion does (chessboard). The
boundary IoU of a prediction is |P_d ∩ G_d| / |P_d ∪ G_d| over the pixels not ignored;
per class the two counts are summed over its episodes, like the IoU.

The state is [2, n_classes] and [n_classes] tensors, so it all-reduces across processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BACKGROUND, FOREGROUND = 0, 1
BOUNDARY_DILATION_RATIO = 0.02  # Cheng et al.'s d: 2% of the image diagonal


def boundary_width(height: int, width: int, ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """d in pixels for an image of this size: round(ratio · diagonal), at least 1 (11 at
    400x400)."""
    return max(1, round(ratio * math.hypot(height, width)))


def _eroded_along(mask: np.ndarray, width: int, axis: int) -> np.ndarray:
    """True where every pixel within ``width`` along ``axis`` is in ``mask`` (outside the
    image counts as not): a sliding count of the pixels outside, by cumulative sums."""
    outside = np.logical_not(mask)
    pad = [(0, 0), (0, 0)]
    pad[axis] = (width + 1, width)  # one extra leading zero-count row for the differences
    counts = np.pad(outside, pad, constant_values=True).cumsum(axis=axis, dtype=np.int32)
    if axis == 0:
        counts[0] = 0
        window = counts[2 * width + 1 :] - counts[: -2 * width - 1]
    else:
        counts[:, 0] = 0
        window = counts[:, 2 * width + 1 :] - counts[:, : -2 * width - 1]
    return window == 0


def mask_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """The boundary region of an HxW bool mask: its pixels with a pixel outside the mask (or
    the image) within chessboard distance ``width``, i.e. the mask minus its erosion by a
    (2·width+1)² square (Cheng et al.'s ``mask_to_boundary``)."""
    mask = np.asarray(mask, dtype=bool)
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    eroded = _eroded_along(_eroded_along(mask, width, 0), width, 1)
    return mask & ~eroded


def boundary_intersection_union(
    prediction: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor
) -> tuple[float, float]:
    """Boundary IoU counts for one foreground prediction: (|P_d ∩ G_d|, |P_d ∪ G_d|) over
    the pixels not ignored, d = :func:`boundary_width` of the map's size."""
    return BoundaryTruth.of(target, ignore).intersection_union(prediction)


@dataclass(frozen=True)
class BoundaryTruth:
    """The ground truth's boundary region (not ignored) and the width d, prepared once."""

    valid: np.ndarray  # bool: not ignored
    boundary: np.ndarray  # bool: G_d and not ignored
    width: int

    @classmethod
    def of(cls, target: torch.Tensor, ignore: torch.Tensor) -> BoundaryTruth:
        valid = np.atleast_2d(~ignore.detach().cpu().numpy().astype(bool))
        truth = np.atleast_2d(target.detach().cpu().numpy().astype(bool))
        width = boundary_width(*truth.shape)
        return cls(valid, mask_boundary(truth, width) & valid, width)

    def intersection_union(self, prediction: torch.Tensor) -> tuple[float, float]:
        predicted = np.atleast_2d(prediction.detach().cpu().numpy())
        predicted = mask_boundary(predicted, self.width) & self.valid
        both = np.count_nonzero(predicted & self.boundary)
        either = np.count_nonzero(predicted) + np.count_nonzero(self.boundary) - both
        return float(both), float(either)


def intersection_union(
    prediction: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts for one prediction: (intersection[bg, fg], union[bg, fg]).

    ``prediction`` and ``target`` are boolean foreground maps of the same shape; pixels
    where ``ignore`` is True are excluded.
    """
    # one count: code = 4·ignore + 2·prediction + target (a masked_fill of the ignored
    # pixels instead costs three times the rest on CPU)
    code = (
        ignore.to(torch.uint8) * 4 + prediction.to(torch.uint8) * 2 + target.bool().to(torch.uint8)
    )
    n = torch.bincount(code.flatten(), minlength=8)
    both_bg, target_only, prediction_only, both_fg = n[0], n[1], n[2], n[3]
    intersection = torch.stack([both_bg, both_fg])
    union = torch.stack(
        [both_bg + target_only + prediction_only, both_fg + target_only + prediction_only]
    )
    return intersection.double(), union.double()


@dataclass(frozen=True)
class GroundTruth:
    """One image's target and ignore mask, prepared once for the predictions of every
    episode that queries it: :meth:`intersection_union` then equals
    :func:`intersection_union` for two counts per prediction. The counts run in NumPy
    (on the CPU), three to four times as fast as torch's here."""

    valid: np.ndarray  # bool: not ignored
    valid_target: np.ndarray  # bool: foreground and not ignored
    n_valid: int
    n_target: int
    boundary: BoundaryTruth

    @classmethod
    def of(cls, target: torch.Tensor, ignore: torch.Tensor) -> GroundTruth:
        valid = ~ignore.cpu().numpy()
        valid_target = target.detach().cpu().numpy().astype(bool) & valid
        return cls(
            valid,
            valid_target,
            np.count_nonzero(valid),
            np.count_nonzero(valid_target),
            BoundaryTruth.of(target, ignore),
        )

    def intersection_union(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``prediction``: a boolean foreground map (on the CPU) of the target's shape."""
        predicted_map = prediction.numpy()
        predicted = np.count_nonzero(predicted_map & self.valid)
        both_fg = np.count_nonzero(predicted_map & self.valid_target)
        target_only = self.n_target - both_fg
        prediction_only = predicted - both_fg
        both_bg = self.n_valid - both_fg - target_only - prediction_only
        outside = target_only + prediction_only
        return (
            torch.tensor([both_bg, both_fg], dtype=torch.float64),
            torch.tensor([both_bg + outside, both_fg + outside], dtype=torch.float64),
        )


@dataclass(frozen=True)
class QueryCounts:
    """What one query adds to :class:`SegmentationScores`: its pixel counts (intersection
    and union [bg, fg]) and its boundary counts (intersection, union)."""

    intersection: torch.Tensor
    union: torch.Tensor
    boundary: tuple[float, float]

    @classmethod
    def of(cls, prediction: torch.Tensor, truth: GroundTruth) -> QueryCounts:
        """A boolean foreground ``prediction`` (on the CPU) against a prepared truth."""
        intersection, union = truth.intersection_union(prediction)
        return cls(intersection, union, truth.boundary.intersection_union(prediction))


class SegmentationScores:
    """Accumulates per-class intersection/union and boundary intersection/union over
    episodes."""

    def __init__(self, class_indices: Sequence[int]) -> None:
        self.class_indices = tuple(class_indices)
        self._column = {c: i for i, c in enumerate(self.class_indices)}
        n = len(self.class_indices)
        self.intersection = torch.zeros(2, n, dtype=torch.float64)
        self.union = torch.zeros(2, n, dtype=torch.float64)
        self.boundary_intersection = torch.zeros(n, dtype=torch.float64)
        self.boundary_union = torch.zeros(n, dtype=torch.float64)
        self.episodes = torch.zeros(n, dtype=torch.float64)

    def update(
        self,
        class_index: int,
        prediction: torch.Tensor,
        target: torch.Tensor,
        ignore: torch.Tensor,
    ) -> None:
        self._add_counts(
            class_index,
            *intersection_union(prediction, target, ignore),
            boundary_intersection_union(prediction, target, ignore),
        )

    def update_with(self, class_index: int, prediction: torch.Tensor, truth: GroundTruth) -> None:
        """:meth:`update` against a prepared ground truth."""
        self.add_query(class_index, QueryCounts.of(prediction, truth))

    def add_query(self, class_index: int, counts: QueryCounts) -> None:
        """Adds one query's counts (:meth:`QueryCounts.of`)."""
        self._add_counts(class_index, counts.intersection, counts.union, counts.boundary)

    def _add_counts(
        self,
        class_index: int,
        intersection: torch.Tensor,
        union: torch.Tensor,
        boundary: tuple[float, float],
    ) -> None:
        column = self._column[class_index]
        self.intersection[:, column] += intersection.cpu()
        self.union[:, column] += union.cpu()
        self.boundary_intersection[column] += boundary[0]
        self.boundary_union[column] += boundary[1]
        self.episodes[column] += 1

    def add(self, other: SegmentationScores) -> None:
        """Adds the counts of ``other``, kept over the same classes."""
        if other.class_indices != self.class_indices:
            raise ValueError("scores over different classes cannot be added")
        self.intersection += other.intersection
        self.union += other.union
        self.boundary_intersection += other.boundary_intersection
        self.boundary_union += other.boundary_union
        self.episodes += other.episodes

    def class_iou(self) -> dict[int, float]:
        """Foreground IoU per class that has at least one scored pixel (fraction in [0, 1])."""
        return {
            c: (self.intersection[FOREGROUND, i] / self.union[FOREGROUND, i]).item()
            for c, i in self._column.items()
            if self.union[FOREGROUND, i] > 0
        }

    def miou(self) -> float:
        ious = list(self.class_iou().values())
        return sum(ious) / len(ious) if ious else float("nan")

    def fbiou(self) -> float:
        intersection = self.intersection.sum(dim=1)
        union = self.union.sum(dim=1)
        return ((intersection / union).mean()).item()

    def class_boundary_iou(self) -> dict[int, float]:
        """Boundary IoU per class whose boundary regions have at least one pixel (fraction)."""
        return {
            c: (self.boundary_intersection[i] / self.boundary_union[i]).item()
            for c, i in self._column.items()
            if self.boundary_union[i] > 0
        }

    def boundary_iou(self) -> float:
        """Mean of :meth:`class_boundary_iou` over the classes (NaN when none)."""
        ious = list(self.class_boundary_iou().values())
        return sum(ious) / len(ious) if ious else float("nan")


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """The area under the ROC curve of scores meant to be higher for ``positives``: the
    probability that a random positive outscores a random negative, ties counting half
    (the Mann–Whitney U statistic over |P|·|N|)."""
    if not positives or not negatives:
        raise ValueError("AUROC needs at least one positive and one negative score")
    pos = np.asarray(positives, dtype=np.float64)[:, None]
    neg = np.asarray(negatives, dtype=np.float64)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))
