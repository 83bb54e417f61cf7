"""The reader interface every data source implements.

A source knows which classes exist, which images contain each class, and how to load an
image with the binary mask of one class and the mask of pixels to ignore. Everything above
it (folds, episodes, evaluation) speaks only this interface.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from fewseg.errors import FewSegError

GENERIC_FOLDS = 4


@dataclass(frozen=True)
class SegClass:
    """A segmentation class: ``index`` is its position in the source's class list."""

    index: int
    name: str


@dataclass(frozen=True)
class ClassSample:
    """One image with the binary mask of one class.

    ``image`` is (H, W, 3) uint8 RGB; ``mask`` and ``ignore`` are (H, W) bool. Ignored
    pixels (VOC boundaries, COCO crowd regions, CamVid void) count neither as foreground
    nor as background.
    """

    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray


@dataclass(frozen=True)
class FoldSplit:
    """Class-disjoint meta-train and test classes of one fold (class indices)."""

    fold: str
    convention: str
    train: tuple[int, ...]
    test: tuple[int, ...]

    def __post_init__(self) -> None:
        shared = set(self.train) & set(self.test)
        if shared:
            raise FewSegError(
                f"fold {self.fold}: meta-train and test classes overlap: {sorted(shared)}"
            )


def interleaved_split(n_classes: int, fold: int, n_folds: int) -> FoldSplit:
    """Fold ``fold`` tests classes ``{n_folds*k + fold}`` (COCO-20i 'split-coco' style)."""
    test = tuple(range(fold, n_classes, n_folds))
    train = tuple(c for c in range(n_classes) if c not in set(test))
    return FoldSplit(str(fold), "interleaved", train, test)


def consecutive_split(n_classes: int, fold: int, n_folds: int) -> FoldSplit:
    """Fold ``fold`` tests the ``fold``-th block of ``n_classes / n_folds`` classes."""
    size = n_classes // n_folds
    test = tuple(range(fold * size, (fold + 1) * size))
    train = tuple(c for c in range(n_classes) if c not in set(test))
    return FoldSplit(str(fold), "consecutive", train, test)


def parse_fold_number(fold: str, n_folds: int) -> int:
    try:
        number = int(fold)
    except ValueError:
        number = -1
    if not 0 <= number < n_folds:
        raise FewSegError(f"unknown fold {fold!r}: expected 0..{n_folds - 1} or 'all'")
    return number


class SegmentationSource(ABC):
    """Base class of the dataset readers.

    Subclasses implement :meth:`classes`, :meth:`_class_pixel_counts` and :meth:`load`;
    they may override :meth:`fold_split` where the field defines standard folds.
    """

    kind: ClassVar[str]
    default_size: ClassVar[int] = 400

    def __init__(self, min_mask_pixels: int = 0) -> None:
        if min_mask_pixels < 0:
            raise FewSegError(f"min_mask_pixels must be >= 0, got {min_mask_pixels}")
        self.min_mask_pixels = min_mask_pixels

    @abstractmethod
    def classes(self) -> Sequence[SegClass]:
        """All classes, ordered by index (``classes()[i].index == i``)."""

    @abstractmethod
    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        """class index → {image id → foreground pixel count} for images containing it.

        Counts must be exact pixel counts at the original resolution whenever
        ``self.min_mask_pixels > 0``; otherwise any positive value will do.
        """

    @abstractmethod
    def load(self, image_id: str, class_index: int) -> ClassSample:
        """The image ``image_id`` with the mask of class ``class_index``."""

    def load_masks(self, image_id: str, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask, ignore) of :meth:`load`, for a caller that holds the image already.
        Sources that can read a mask without decoding its image override this."""
        sample = self.load(image_id, class_index)
        return sample.mask, sample.ignore

    def settings(self) -> dict[str, Any]:
        """What identifies this source in a report."""
        return {"kind": self.kind, "min_mask_pixels": self.min_mask_pixels}

    @cached_property
    def key(self) -> str:
        """What tells this source's images from another's in the names of image tensors
        (fewseg.episodes.image_keys): its settings, as text."""
        return json.dumps(self.settings(), sort_keys=True, default=str)

    @cached_property
    def _images_by_class(self) -> dict[int, tuple[str, ...]]:
        counts = self._class_pixel_counts()
        threshold = max(self.min_mask_pixels, 1)
        return {
            c.index: tuple(sorted(i for i, n in counts.get(c.index, {}).items() if n >= threshold))
            for c in self.classes()
        }

    def images_of(self, class_index: int) -> tuple[str, ...]:
        """Sorted ids of the images whose mask of the class has enough pixels."""
        return self._images_by_class[class_index]

    def class_name(self, class_index: int) -> str:
        return self.classes()[class_index].name

    def load_image(self, image_id: str) -> np.ndarray:
        """The (H, W, 3) uint8 image alone (any class of it, loaded)."""
        for c in self.classes():
            if image_id in set(self.images_of(c.index)):
                return self.load(image_id, c.index).image
        raise FewSegError(f"{self.kind}: no image {image_id!r} in any class")

    def pseudo_image_ids(self, fold: str) -> tuple[str, ...]:
        """The images self-supervised episodes of ``fold``'s meta-training may use: those
        that show one of its meta-train classes (test classes appear in them only as
        unlabelled pixels, as in any training image of the protocol). Sorted."""
        split = self.fold_split(fold)
        return tuple(sorted({i for c in split.train for i in self.images_of(c)}))

    @property
    def default_fold(self) -> str:
        """The fold a command uses when none is named: ``0``, the first of the standard
        folds; a source without numbered folds names the one it has."""
        return "0"

    def fold_split(self, fold: str) -> FoldSplit:
        """``all``: every class is a test class; ``0..3``: interleaved folds over the classes."""
        n = len(self.classes())
        if fold == "all":
            return FoldSplit("all", "all", (), tuple(range(n)))
        return interleaved_split(n, parse_fold_number(fold, GENERIC_FOLDS), GENERIC_FOLDS)
