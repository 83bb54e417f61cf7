"""Reading and checking a COCO instances json, and turning a segmentation into an RLE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from fewseg.errors import FewSegError

Rle = dict[str, Any]


def check_dataset(dataset: object, path: Path) -> None:
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
        area = ann.get("area", 0)
        if not isinstance(area, (int, float)) or isinstance(area, bool):
            raise fail(f"annotation {ann['id']} has an invalid 'area'")


def read_instances(path: Path) -> dict[str, Any]:
    """The parsed and checked json (several GB of Python objects for COCO train)."""
    try:
        with path.open(encoding="utf-8") as f:
            dataset = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FewSegError(f"{path}: cannot read COCO json ({exc})") from None
    check_dataset(dataset, path)
    return dataset


def segmentation_rle(segmentation: Any, height: int, width: int) -> Rle:
    """Polygons, uncompressed or compressed RLE → compressed RLE, as pycocotools'
    ``COCO.annToRLE`` does it (same calls, so the same exceptions on bad input)."""
    if type(segmentation) is list:
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if type(segmentation["counts"]) is list:
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation
