"""COCO instances json + image folder (COCO-20i)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

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

Rle = dict[str, Any]


def _check_dataset(dataset: object, path: Path) -> None:
    """Raise a one-line error unless ``dataset`` has the COCO instances structure."""

    def fail(reason: str) -> FewSegError:
        return FewSegError(f"{path}: not a COCO instances file ({reason})")

    if not isinstance(dataset, dict):
        raise fail("top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise fail(f"no '{key}' list")
    for kind, fields in (
        ("categories", {"id": int, "name": str}),
        ("images", {"id": int, "file_name": str, "width": int, "height": int}),
        ("annotations", {"id": int, "image_id": int, "category_id": int}),
    ):
        seen: set[int] = set()
        for i, entry in enumerate(dataset[kind]):
            if not isinstance(entry, dict):
                raise fail(f"{kind}[{i}] is not an object")
            for name, type_ in fields.items():
                value = entry.get(name)
                if not isinstance(value, type_) or isinstance(value, bool):
                    raise fail(f"{kind}[{i}] has no valid '{name}'")
            if entry["id"] in seen:
                raise fail(f"{kind} id {entry['id']} appears twice")
            seen.add(entry["id"])
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    for ann in dataset["annotations"]:
        if ann["image_id"] not in image_ids:
            raise fail(f"annotation {ann['id']} refers to unknown image {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise fail(f"annotation {ann['id']} refers to unknown category {ann['category_id']}")
        if not isinstance(ann.get("segmentation"), (list, dict)):
            raise fail(f"annotation {ann['id']} has no segmentation")


def _load_coco(path: Path) -> COCO:
    try:
        with path.open(encoding="utf-8") as f:
            dataset = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FewSegError(f"{path}: cannot read COCO json ({exc})") from None
    _check_dataset(dataset, path)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoSource(SegmentationSource):
    """Classes are the json's categories sorted by id; masks are unions of instances.

    Crowd (``iscrowd=1``) regions of the class, outside its instances, are ignored.
    """

    kind = "coco"

    def __init__(
        self,
        root: str | Path,
        annotation_file: str | Path,
        images_dir: str | Path,
        convention: str = "interleaved",
        min_mask_pixels: int = 0,
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
        self._coco = _load_coco(self.annotation_file)
        categories = sorted(self._coco.dataset["categories"], key=lambda c: c["id"])
        self._classes = tuple(SegClass(i, c["name"]) for i, c in enumerate(categories))
        self._index_of_category = {c["id"]: i for i, c in enumerate(categories)}
        self._instances: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._crowds: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for ann in self._coco.dataset["annotations"]:
            key = (ann["image_id"], self._index_of_category[ann["category_id"]])
            group = self._crowds if ann.get("iscrowd", 0) else self._instances
            group.setdefault(key, []).append(ann)

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

    def _rle(self, ann: dict[str, Any]) -> Rle:
        record = self._coco.imgs[ann["image_id"]]
        try:
            rle = self._coco.annToRLE(ann)
            size = [int(n) for n in rle["size"]]
        except Exception as exc:  # pycocotools raises bare Exception on bad input
            raise FewSegError(
                f"{self.annotation_file}: annotation {ann['id']} has an invalid "
                f"segmentation ({exc})"
            ) from None
        if size != [record["height"], record["width"]]:
            raise FewSegError(
                f"{self.annotation_file}: annotation {ann['id']} is {size[1]}x{size[0]} "
                f"but its image is {record['width']}x{record['height']}"
            )
        return rle

    def _union(self, anns: list[dict[str, Any]]) -> Rle:
        return mask_utils.merge([self._rle(ann) for ann in anns], intersect=0)

    def _decode(self, image_id: int, anns: list[dict[str, Any]]) -> np.ndarray:
        record = self._coco.imgs[image_id]
        if not anns:
            return np.zeros((record["height"], record["width"]), dtype=bool)
        rle = self._union(anns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2
            return mask_utils.decode(rle).astype(bool, order="C")  # decoded column-major

    def _count(self, anns: list[dict[str, Any]]) -> int:
        if self.min_mask_pixels > 0:
            return int(mask_utils.area(self._union(anns)))
        area = sum(float(ann.get("area", 0)) for ann in anns)
        return max(1, round(area))

    @cached_property
    def _counts(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {c.index: {} for c in self._classes}
        for (image_id, class_index), anns in self._instances.items():
            counts[class_index][str(image_id)] = self._count(anns)
        return counts

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return self._counts

    def _image_record(self, image_id: str) -> dict[str, Any]:
        try:
            return self._coco.imgs[int(image_id)]
        except (ValueError, KeyError):
            raise FewSegError(f"{self.annotation_file}: no image with id {image_id!r}") from None

    def load(self, image_id: str, class_index: int) -> ClassSample:
        record = self._image_record(image_id)
        image = read_rgb(self.images_dir / record["file_name"])
        mask, ignore = self.load_masks(image_id, class_index)
        check_same_size(image, mask, f"{self.annotation_file} (image {record['file_name']})")
        return ClassSample(image=image, mask=mask, ignore=ignore)

    def load_masks(self, image_id: str, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """From the annotations alone (at the size the image record gives)."""
        record = self._image_record(image_id)
        if not 0 <= class_index < len(self._classes):
            raise FewSegError(f"coco: no class with index {class_index}")
        key = (record["id"], class_index)
        mask = self._decode(record["id"], self._instances.get(key, []))
        crowd = self._decode(record["id"], self._crowds.get(key, []))
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
    )
