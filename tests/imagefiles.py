"""Small image and mask files for the tests of ``fewseg segment`` and of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

OBJECT = (220, 30, 30)
BACKGROUND = (40, 140, 60)

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def scene(height: int, width: int, box: Box) -> np.ndarray:
    """A red box on a green background with a mild deterministic texture: (H, W, 3) uint8."""
    rows, cols = np.mgrid[0:height, 0:width]
    texture = ((rows * 7 + cols * 13) % 17).astype(np.int16) - 8
    image = np.empty((height, width, 3), np.int16)
    image[:] = BACKGROUND
    top, left, bottom, right = box
    image[top:bottom, left:right] = OBJECT
    return np.clip(image + texture[..., None], 0, 255).astype(np.uint8)


def box_mask(height: int, width: int, box: Box, value: int = 255) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = value
    return mask


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``array`` as an image file (format from the suffix), converted to ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def support_pair(directory: Path, stem: str = "support", size: int = 64) -> tuple[Path, Path]:
    """A support image (JPEG) with its 0/255 mask (PNG): a 24 x 24 object."""
    box = (8, 12, 32, 36)
    image = save(directory / f"{stem}.jpg", scene(size, size, box))
    mask = save(directory / f"{stem}.png", box_mask(size, size, box))
    return image, mask


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")) if directory.exists() else []
