"""COCO instances json + image folder (COCO-20i)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from fewseg.data.coco_index import Annotation, CocoIndex, ImageRecord
from fewseg.data.coco_json import Rle, segmentation_rle
from fewseg.data.imageio import check_same_size, read_rgb
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

COCO_FOLDS = 4
CONVENTIONS = ("interleaved", "consecutive")


class CocoSource(SegmentationSource):
    """Classes are the json's categories sorted by id; masks are unions of instances.

    Crowd (``iscrowd=1``) regions of the class, outside its instances, are ignored. The
    json is read through a :class:`~fewseg.data.coco_index.CocoIndex` kept in
    ``index_cache`` (default ``$XDG_CACHE_HOME/fewseg/index``): parsed and checked the first
    time, and again whenever the file changes.
    """

    kind = "coco"

    def __init__(
        self,
        root: str | Path,
        annotation_file: str | Path,
        images_dir: str | Path,
        convention: str = "interleaved",
        min_mask_pixels: int = 0,
        index_cache: str | Path | None = None,
    ) -> None:
        super().__init__(min_mask_pixels)
        if convention not in CONVENTIONS:
            raise FewSegError(f"coco: fold convention must be one of {', '.join(CONVENTIONS)}")
        self.root = Path(root)
        self.annotation_file = self.root / annotation_file
        self.images_dir = self.root / images_dir
        self.convention = convention
        if not self.root.is_dir():
            raise FewSegError(f"coco: {self.root}: no such directory")
        if not self.annotation_file.is_file():
            raise FewSegError(f"coco: {self.annotation_file}: no such annotation file")
        if not self.images_dir.is_dir():
            raise FewSegError(f"coco: {self.images_dir}: no such images directory")
        self.index = CocoIndex(self.annotation_file, index_cache)
        names = [name for _, name in self.index.categories()]
        self._classes = tuple(SegClass(i, name) for i, name in enumerate(names))

    def classes(self) -> Sequence[SegClass]:
        return self._classes

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "root": str(self.root),
            "annotations": str(self.annotation_file),
            "images": str(self.images_dir),
            "fold_convention": self.convention,
        }

    def fold_split(self, fold: str) -> FoldSplit:
        """``all``, or COCO-20i fold ``0..3`` in the chosen convention."""
        n = len(self._classes)
        if fold == "all":
            return FoldSplit("all", "all", (), tuple(range(n)))
        number = parse_fold_number(fold, COCO_FOLDS)
        split = interleaved_split if self.convention == "interleaved" else consecutive_split
        return split(n, number, COCO_FOLDS)

    def _rle(self, ann: Annotation, record: ImageRecord) -> Rle:
        try:
            rle = segmentation_rle(ann.segmentation, record.height, record.width)
            size = [int(n) for n in rle["size"]]
        except Exception as exc:  # pycocotools raises bare Exception on bad input
            raise FewSegError(
                f"{self.annotation_file}: annotation {ann.ann_id} has an invalid "
                f"segmentation ({exc})"
            ) from None
        if size != [record.height, record.width]:
            raise FewSegError(
                f"{self.annotation_file}: annotation {ann.ann_id} is {size[1]}x{size[0]} "
                f"but its image is {record.width}x{record.height}"
            )
        return rle

    def _union(self, anns: list[Annotation], record: ImageRecord) -> Rle:
        return mask_utils.merge([self._rle(ann, record) for ann in anns], intersect=0)

    def _decode(self, anns: list[Annotation], record: ImageRecord) -> np.ndarray:
        if not anns:
            return np.zeros((record.height, record.width), dtype=bool)
        rle = self._union(anns, record)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2
            return mask_utils.decode(rle).astype(bool, order="C")  # decoded column-major

    @cached_property
    def _counts(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {c.index: {} for c in self._classes}
        if self.min_mask_pixels > 0:
            for class_index, image_id, pixels in self._exact_areas():
                counts[class_index][str(image_id)] = pixels
        else:
            for class_index, image_id, area in self.index.json_areas():
                counts[class_index][str(image_id)] = max(1, round(area))
        return counts

    def _exact_areas(self) -> list[tuple[int, int, int]]:
        """Pixels of each (class, image) union of instances: from the index when stored,
        else decoded once and stored. Of several invalid annotations, the one reported is
        in the group that comes first in the json, as when the groups are decoded in order."""
        stored = self.index.exact_areas()
        if stored is not None:
            return stored
        first = {(g.class_index, g.image_id): g.order for g in self.index.instance_groups()}
        areas: list[tuple[int, int, int]] = []
        errors: list[tuple[int, FewSegError]] = []
        for record, anns in self.index.all_annotations():
            by_class: dict[int, list[Annotation]] = {}
            for ann in anns:
                if not ann.crowd:
                    by_class.setdefault(ann.class_index, []).append(ann)
            for class_index, instances in by_class.items():
                try:
                    pixels = int(mask_utils.area(self._union(instances, record)))
                except FewSegError as exc:
                    errors.append((first[(class_index, record.image_id)], exc))
                    continue
                areas.append((class_index, record.image_id, pixels))
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        self.index.store_exact_areas(areas)
        return areas

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return self._counts

    def _image_record(self, image_id: str) -> ImageRecord:
        try:
            record = self.index.image(int(image_id))
        except (ValueError, OverflowError):
            record = None
        if record is None:
            raise FewSegError(f"{self.annotation_file}: no image with id {image_id!r}")
        return record

    def load(self, image_id: str, class_index: int) -> ClassSample:
        record = self._image_record(image_id)
        image = read_rgb(self.images_dir / record.file_name)
        mask, ignore = self.load_masks(image_id, class_index)
        check_same_size(image, mask, f"{self.annotation_file} (image {record.file_name})")
        return ClassSample(image=image, mask=mask, ignore=ignore)

    def load_masks(self, image_id: str, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """From the annotations alone (at the size the image record gives)."""
        record = self._image_record(image_id)
        if not 0 <= class_index < len(self._classes):
            raise FewSegError(f"coco: no class with index {class_index}")
        anns = [a for a in self.index.annotations(record.image_id) if a.class_index == class_index]
        mask = self._decode([a for a in anns if not a.crowd], record)
        crowd = self._decode([a for a in anns if a.crowd], record)
        return mask, crowd & ~mask


@SOURCES.register("coco", "COCO instances json + images folder; COCO-20i folds")
def open_coco(root: str | None, options: SpecOptions, min_mask_pixels: int) -> CocoSource:
    if root is None:
        raise FewSegError("coco: needs a root directory, e.g. coco:PATH")
    return CocoSource(
        root,
        options.pop_str("annotations", "annotations/instances.json") or "",
        options.pop_str("images", "images") or "",
        options.pop_choice("folds", CONVENTIONS, "interleaved"),
        min_mask_pixels,
        options.index_cache,
    )
