"""COCO-20i as the few-shot papers distribute it: class-valued PNG masks beside COCO2014.

ROOT is the ``COCO2014`` folder of HSNet / DCAMA::

    train2014/COCO_train2014_<id>.jpg         val2014/COCO_val2014_<id>.jpg
    annotations/train2014/<same stem>.png     annotations/val2014/<same stem>.png

A mask's pixel value ``v`` in 1..80 is class ``v - 1`` (the 80 COCO categories in id order,
as in the ``coco`` reader), 0 is background and 255 is ignored. Which images, by option:

- none: every ``<stem>.png`` of ``masks`` (default ``annotations/<split>2014``) with its
  ``images/<stem>.jpg`` (default ``images=<split>2014``); which classes an image holds is
  read from its mask;
- ``list=FILE``: PFENet / RePRI lists, one ``<image> <mask>`` pair per line, relative to
  ROOT (``val2014/COCO_val2014_<id>.jpg val/COCO_val2014_<id>.png``);
- ``splits=DIR``: HSNet's ``data/splits/coco``: the images of each class come from its
  ``{trn,val}/fold*.pkl`` lists (``val2014/<stem>.jpg``, mask
  ``annotations/val2014/<stem>.png``), so no mask is read before it is needed unless
  ``min_mask_pixels`` asks for exact counts.

An image's id is its file stem. Folds are COCO-20i's: interleaved by default (HSNet, PFENet's
``use_split_coco``), ``folds=consecutive`` for PFENet's other setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewseg.data.coco import COCO_FOLDS, CONVENTIONS
from fewseg.data.hsnet_splits import read_coco_folds
from fewseg.data.imageio import check_same_size, read_label_map, read_rgb
from fewseg.data.source import (
    ClassSample,
    FoldSplit,
    SegClass,
    SegmentationSource,
    consecutive_split,
    interleaved_split,
    parse_fold_number,
)
from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.errors import FewSegError

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
IGNORE_LABEL = 255
SPLITS = ("train", "val")

Pair = tuple[Path, Path]  # image, mask


def read_pair_list(path: Path, root: Path) -> dict[str, Pair]:
    """Stem → (image, mask) of a PFENet-style list, paths relative to ``root``."""
    if not path.is_file():
        raise FewSegError(f"{path}: no such image list")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FewSegError(f"{path}: cannot read image list ({exc})") from None
    pairs: dict[str, Pair] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise FewSegError(f"{path}:{number}: expected 'image mask', got {line.strip()!r}")
        pair = (root / fields[0], root / fields[1])
        stem = pair[0].stem
        if pairs.setdefault(stem, pair) != pair:
            raise FewSegError(f"{path}:{number}: a second pair for image {stem!r}")
    if not pairs:
        raise FewSegError(f"{path}: the image list is empty")
    return pairs


def scan_masks(images_dir: Path, masks_dir: Path) -> dict[str, Pair]:
    """Stem → (image, mask) of every ``masks_dir/<stem>.png``."""
    for directory in (images_dir, masks_dir):
        if not directory.is_dir():
            raise FewSegError(f"coco20i: {directory}: no such directory")
    pairs = {
        p.stem: (images_dir / f"{p.stem}.jpg", p)
        for p in sorted(masks_dir.glob("*.png"))
        if not p.name.startswith(".")
    }
    if not pairs:
        raise FewSegError(f"coco20i: {masks_dir}: no <name>.png masks")
    return pairs


class Coco20iSource(SegmentationSource):
    """80 classes; the mask of class ``c`` is where the label map holds ``c + 1``."""

    kind = "coco20i"

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        images_dir: str | Path | None = None,
        masks_dir: str | Path | None = None,
        list_file: str | Path | None = None,
        splits_dir: str | Path | None = None,
        convention: str = "interleaved",
        min_mask_pixels: int = 0,
    ) -> None:
        super().__init__(min_mask_pixels)
        if split not in SPLITS:
            raise FewSegError(f"coco20i: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if convention not in CONVENTIONS:
            raise FewSegError(f"coco20i: folds must be one of {', '.join(CONVENTIONS)}")
        if list_file is not None and splits_dir is not None:
            raise FewSegError("coco20i: give list= or splits=, not both")
        if (list_file or splits_dir) is not None and (images_dir or masks_dir) is not None:
            raise FewSegError("coco20i: images= and masks= apply only without list= or splits=")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FewSegError(f"{self.root}: no such directory (expected the COCO2014 folder)")
        self.split = split
        self.convention = convention
        self.images_dir = self.root / (images_dir or f"{split}2014")
        self.masks_dir = self.root / (masks_dir or f"annotations/{split}2014")
        self.list_file = self.root / list_file if list_file is not None else None
        self.splits_dir = self.root / splits_dir if splits_dir is not None else None
        self._listed: dict[int, tuple[str, ...]] | None = None
        if self.list_file is not None:
            self._pairs = read_pair_list(self.list_file, self.root)
        elif self.splits_dir is not None:
            self._pairs, self._listed = self._hsnet_lists(self.splits_dir)
        else:
            self._pairs = scan_masks(self.images_dir, self.masks_dir)

    def _hsnet_lists(self, splits_dir: Path) -> tuple[dict[str, Pair], dict[int, tuple[str, ...]]]:
        names = read_coco_folds(splits_dir, self.split, len(COCO_CLASSES))
        pairs: dict[str, Pair] = {}
        listed: dict[int, tuple[str, ...]] = {}
        for class_index, paths in names.items():
            for name in paths:
                image = self.root / name
                mask = (self.root / "annotations" / name).with_suffix(".png")
                pairs.setdefault(image.stem, (image, mask))
            listed[class_index] = tuple(Path(name).stem for name in paths)
        return pairs, listed

    def classes(self) -> Sequence[SegClass]:
        return tuple(SegClass(i, name) for i, name in enumerate(COCO_CLASSES))

    def _paths(self, image_id: str) -> Pair:
        try:
            return self._pairs[image_id]
        except KeyError:
            raise FewSegError(f"coco20i: unknown image {image_id!r}") from None

    def _labels(self, image_id: str) -> np.ndarray:
        path = self._paths(image_id)[1]
        labels = read_label_map(path)
        histogram = np.bincount(labels.ravel(), minlength=256)
        bad = np.flatnonzero(histogram[len(COCO_CLASSES) + 1 : IGNORE_LABEL])
        if bad.size:
            value = int(bad[0]) + len(COCO_CLASSES) + 1
            raise FewSegError(
                f"{path}: label value {value} is not a COCO-20i label (0..80 or 255); "
                "masks must be grayscale or palette index PNGs"
            )
        return labels

    @cached_property
    def _counts(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {c: {} for c in range(len(COCO_CLASSES))}
        if self._listed is not None and self.min_mask_pixels == 0:
            for class_index, ids in self._listed.items():
                counts[class_index] = dict.fromkeys(ids, 1)
            return counts
        allowed = None
        if self._listed is not None:
            allowed = {c: frozenset(ids) for c, ids in self._listed.items()}
        for image_id, (image_path, _) in self._pairs.items():
            if not image_path.is_file():
                raise FewSegError(f"{image_path}: no such file")
            per_label = np.bincount(self._labels(image_id).ravel(), minlength=256)
            for label in np.flatnonzero(per_label[1 : len(COCO_CLASSES) + 1]):
                if allowed is None or image_id in allowed.get(int(label), ()):
                    counts[int(label)][image_id] = int(per_label[label + 1])
        return counts

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return self._counts

    def _check_class(self, class_index: int) -> None:
        if not 0 <= class_index < len(COCO_CLASSES):
            raise FewSegError(f"coco20i: class index {class_index} is not in 0..79")

    def load(self, image_id: str, class_index: int) -> ClassSample:
        self._check_class(class_index)
        image_path, mask_path = self._paths(image_id)
        image = read_rgb(image_path)
        labels = self._labels(image_id)
        check_same_size(image, labels, mask_path)
        return ClassSample(image, labels == class_index + 1, labels == IGNORE_LABEL)

    def load_masks(self, image_id: str, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_class(class_index)
        labels = self._labels(image_id)
        return labels == class_index + 1, labels == IGNORE_LABEL

    def fold_split(self, fold: str) -> FoldSplit:
        """``all``, or COCO-20i fold ``0..3`` in the chosen convention."""
        if fold == "all":
            return super().fold_split(fold)
        number = parse_fold_number(fold, COCO_FOLDS)
        split = interleaved_split if self.convention == "interleaved" else consecutive_split
        return split(len(COCO_CLASSES), number, COCO_FOLDS)

    def settings(self) -> dict[str, Any]:
        images: dict[str, Any]
        if self.list_file is not None:
            images = {"list": str(self.list_file)}
        elif self.splits_dir is not None:
            images = {"splits": str(self.splits_dir)}
        else:
            images = {"images": str(self.images_dir), "masks": str(self.masks_dir)}
        return {
            **super().settings(),
            "root": str(self.root),
            "split": self.split,
            **images,
            "fold_convention": self.convention,
        }


@SOURCES.register(
    "coco20i",
    "COCO-20i class-valued PNG masks (HSNet/PFENet): "
    "coco20i:COCO2014[,split=val|train][,list=FILE|splits=DIR][,folds=consecutive]",
)
def open_coco20i(root: str | None, options: SpecOptions, min_mask_pixels: int) -> Coco20iSource:
    if root is None:
        raise FewSegError(f"{options.spec}: needs the COCO2014 directory (coco20i:ROOT)")
    return Coco20iSource(
        root,
        split=options.pop_choice("split", SPLITS, "val"),
        images_dir=options.pop_str("images"),
        masks_dir=options.pop_str("masks"),
        list_file=options.pop_str("list"),
        splits_dir=options.pop_str("splits"),
        convention=options.pop_choice("folds", CONVENTIONS, "interleaved"),
        min_mask_pixels=min_mask_pixels,
    )
