"""Predicted masks in the formats people take elsewhere: 8-bit PNGs (255 = foreground), a
COCO-style JSON with one RLE-encoded annotation per non-empty mask (pycocotools' encoding,
so ``pycocotools.coco.COCO`` reads it back), and a zip of the PNGs (the page's download).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

COCO_NAME = "coco.json"
DEFAULT_CLASS_NAME = "object"


@dataclass(frozen=True)
class NamedMask:
    """A predicted mask and where it came from: ``file_name`` is the image's name relative
    to the folder of all queries (``day/x.jpg``), ``name`` that without its suffix."""

    name: str
    file_name: str
    mask: np.ndarray  # HxW bool


def png_bytes(array: np.ndarray) -> bytes:
    """An HxW uint8 array (or bool: 255 = True) as PNG bytes."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of an HxW bool mask: ``{"size": [h, w], "counts": str}``."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def coco_document(
    masks: Sequence[NamedMask],
    class_name: str = DEFAULT_CLASS_NAME,
    scores: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A COCO instances document: every query an image (ids from 1), every non-empty mask
    one annotation of category 1 (``class_name``) with its RLE, area and [x, y, w, h] box;
    ``scores``: one per mask, stored as each annotation's ``score``."""
    images, annotations = [], []
    for index, item in enumerate(masks, start=1):
        height, width = item.mask.shape
        images.append({"id": index, "file_name": item.file_name, "width": width, "height": height})
        if not item.mask.any():
            continue
        encoded = rle(item.mask)
        annotation = {
            "id": len(annotations) + 1,
            "image_id": index,
            "category_id": 1,
            "segmentation": encoded,
            "area": int(item.mask.sum()),
            "bbox": bounding_box(item.mask),
            "iscrowd": 0,
        }
        if scores is not None:
            annotation["score"] = float(scores[index - 1])
        annotations.append(annotation)
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": class_name, "supercategory": class_name}],
    }


def bounding_box(mask: np.ndarray) -> list[float]:
    """COCO's [x, y, width, height] of a non-empty mask's pixels."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    x, y = int(cols[0]), int(rows[0])
    return [float(x), float(y), float(cols[-1] + 1 - x), float(rows[-1] + 1 - y)]


def masks_zip(masks: Sequence[NamedMask], folder: str = "masks") -> bytes:
    """A zip of ``folder/<name>.png`` per mask (8-bit, 255 = foreground)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in masks:
            archive.writestr(f"{folder}/{item.name}.png", png_bytes(item.mask))
    return buffer.getvalue()
