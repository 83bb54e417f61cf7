"""PASCAL VOC2012 (and its SBD-augmented masks) with the PASCAL-5i folds.

On disk, ROOT is the ``VOC2012`` directory::

    JPEGImages/<stem>.jpg
    SegmentationClass/<stem>.png        palette PNG: 0 background, 1..20 classes, 255 ignore
    SegmentationClassAug/<stem>.png     SBD-augmented masks (palette or grayscale index PNGs)
    ImageSets/Segmentation/{train,val}.txt
    ImageSets/SegmentationAug/train_aug.txt   (optional)

The image list is ``list=FILE`` if given (relative to ROOT, or absolute). Otherwise it is
``ImageSets/Segmentation/<split>.txt``, except for ``split=train`` with
``masks=SegmentationClassAug``, which uses ``ImageSets/SegmentationAug/train_aug.txt`` when
that file exists and falls back to ``ImageSets/Segmentation/train.txt``. A list line is either
a stem (``2007_000032``) or an SBD-style pair (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``);
only the image's stem is used, and the mask is always read from the ``masks`` directory.
PFENet's lists (``lists/pascal/voc_sbd_merge_noduplicate.txt`` for train, ``val.txt``) are
such pair lists: ``list=FILE,masks=SegmentationClassAug``.

``splits=DIR`` reads HSNet's ``data/splits/pascal`` instead of a list: the images of each
class are those listed with it in ``DIR/{trn,val}/fold{0..3}.txt`` (``<stem>__<label>``
lines), so no mask is read before it is needed unless ``min_mask_pixels`` asks for exact
counts. HSNet reads ``SegmentationClassAug`` for both splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewseg.data.hsnet_splits import read_pascal_folds
from fewseg.data.imageio import check_same_size, read_label_map, read_rgb
from fewseg.data.source import (
    ClassSample,
    FoldSplit,
    SegClass,
    SegmentationSource,
    consecutive_split,
    parse_fold_number,
)
from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.errors import FewSegError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE_LABEL = 255
PASCAL_FOLDS = 4
SPLITS = ("train", "val")
MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")


def default_list_file(root: Path, split: str, masks: str) -> Path:
    if split == "train" and masks == "SegmentationClassAug":
        aug = root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
        if aug.is_file():
            return aug
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def read_image_list(path: Path) -> tuple[str, ...]:
    """Image stems of a VOC or SBD list file, in file order, without duplicates."""
    if not path.is_file():
        raise FewSegError(f"{path}: no such image list")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FewSegError(f"{path}: cannot read image list ({exc})") from None
    stems: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise FewSegError(f"{path}:{number}: expected 'stem' or 'image mask', got {line!r}")
        stems[Path(fields[0]).stem] = None
    if not stems:
        raise FewSegError(f"{path}: the image list is empty")
    return tuple(stems)


class PascalSource(SegmentationSource):
    """VOC2012 segmentation: 20 classes, index ``i`` is VOC label ``i + 1``."""

    kind = "pascal"

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        masks: str = "SegmentationClass",
        list_file: str | Path | None = None,
        min_mask_pixels: int = 0,
        splits_dir: str | Path | None = None,
    ) -> None:
        super().__init__(min_mask_pixels)
        if list_file is not None and splits_dir is not None:
            raise FewSegError("pascal: give list= or splits=, not both")
        if split not in SPLITS:
            raise FewSegError(f"pascal: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if masks not in MASK_DIRS:
            raise FewSegError(f"pascal: masks must be one of {', '.join(MASK_DIRS)}, got {masks!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FewSegError(f"{self.root}: no such directory (expected the VOC2012 root)")
        self.split = split
        self.image_dir = self._require_dir(self.root / "JPEGImages")
        self.mask_dir = self._require_dir(self.root / masks)
        self.splits_dir = self.root / splits_dir if splits_dir is not None else None
        self._listed: dict[int, tuple[str, ...]] | None = None
        if self.splits_dir is not None:
            self.list_file = None
            self._listed = read_pascal_folds(self.splits_dir, split, len(VOC_CLASSES))
            stems = (stem for c in sorted(self._listed) for stem in self._listed[c])
            self.image_ids = tuple(dict.fromkeys(stems))
        else:
            self.list_file = (
                self.root / list_file if list_file else default_list_file(self.root, split, masks)
            )
            self.image_ids = read_image_list(self.list_file)
        self._known_ids = frozenset(self.image_ids)

    @staticmethod
    def _require_dir(path: Path) -> Path:
        if not path.is_dir():
            raise FewSegError(f"{path}: no such directory")
        return path

    def classes(self) -> Sequence[SegClass]:
        return tuple(SegClass(i, name) for i, name in enumerate(VOC_CLASSES))

    def _image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def _mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    def _read_mask(self, image_id: str) -> np.ndarray:
        path = self._mask_path(image_id)
        labels = read_label_map(path)
        counts = np.bincount(labels.ravel(), minlength=256)
        bad = np.flatnonzero(counts[len(VOC_CLASSES) + 1 : IGNORE_LABEL])
        if bad.size:
            value = int(bad[0]) + len(VOC_CLASSES) + 1
            raise FewSegError(
                f"{path}: label value {value} is not a VOC label (0..20 or 255); "
                "masks must be palette or grayscale index PNGs"
            )
        return labels

    @cached_property
    def _counts(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {c: {} for c in range(len(VOC_CLASSES))}
        if self._listed is not None and self.min_mask_pixels == 0:
            for image_id in self.image_ids:
                for path in (self._image_path(image_id), self._mask_path(image_id)):
                    if not path.is_file():
                        raise FewSegError(f"{path}: no such file")
            for class_index, stems in self._listed.items():
                counts[class_index] = dict.fromkeys(stems, 1)
            return counts
        allowed = None
        if self._listed is not None:
            allowed = {c: frozenset(stems) for c, stems in self._listed.items()}
        for image_id in self.image_ids:
            if not self._image_path(image_id).is_file():
                raise FewSegError(f"{self._image_path(image_id)}: no such file")
            per_label = np.bincount(self._read_mask(image_id).ravel(), minlength=256)
            for label in np.flatnonzero(per_label[1 : len(VOC_CLASSES) + 1]):
                if allowed is None or image_id in allowed.get(int(label), ()):
                    counts[int(label)][image_id] = int(per_label[label + 1])
        return counts

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return self._counts

    def load(self, image_id: str, class_index: int) -> ClassSample:
        if image_id not in self._known_ids:
            where = self.list_file or self.splits_dir
            raise FewSegError(f"pascal: image {image_id!r} is not in {where}")
        if not 0 <= class_index < len(VOC_CLASSES):
            raise FewSegError(f"pascal: class index {class_index} is not in 0..19")
        image = read_rgb(self._image_path(image_id))
        labels = self._read_mask(image_id)
        check_same_size(image, labels, self._mask_path(image_id))
        return ClassSample(image, labels == class_index + 1, labels == IGNORE_LABEL)

    def fold_split(self, fold: str) -> FoldSplit:
        """``all``, or PASCAL-5i fold ``i`` in 0..3: test classes 5i..5i+4."""
        if fold == "all":
            return super().fold_split(fold)
        number = parse_fold_number(fold, PASCAL_FOLDS)
        split = consecutive_split(len(VOC_CLASSES), number, PASCAL_FOLDS)
        return replace(split, convention="pascal-5i")

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "root": str(self.root),
            "split": self.split,
            "masks": self.mask_dir.name,
            **(
                {"splits": str(self.splits_dir)}
                if self.splits_dir is not None
                else {"list": str(self.list_file)}
            ),
        }


@SOURCES.register(
    "pascal",
    "PASCAL VOC2012/SBD, PASCAL-5i folds: "
    "pascal:ROOT[,split=train|val][,masks=SegmentationClass|SegmentationClassAug]"
    "[,list=FILE|splits=HSNET_SPLIT_DIR]",
)
def open_pascal(root: str | None, options: SpecOptions, min_mask_pixels: int) -> PascalSource:
    if root is None:
        raise FewSegError(f"{options.spec}: needs the VOC2012 directory (pascal:ROOT)")
    return PascalSource(
        root,
        split=options.pop_choice("split", SPLITS, "val"),
        masks=options.pop_choice("masks", MASK_DIRS, "SegmentationClass"),
        list_file=options.pop_str("list"),
        min_mask_pixels=min_mask_pixels,
        splits_dir=options.pop_str("splits"),
    )
