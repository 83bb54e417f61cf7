"""The files docs/api.md's example reads, made in a scratch folder it runs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def scene(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A red box on a green, lightly textured background."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.int16)
    image[:] = (40, 140, 60)
    top, left, bottom, right = box
    image[top:bottom, left:right] = (220, 30, 30)
    texture = ((rows * 7 + cols * 13) % 17).astype(np.int16) - 8
    return np.clip(image + texture[..., None], 0, 255).astype(np.uint8)


def mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    values = np.zeros((height, width), np.uint8)
    top, left, bottom, right = box
    values[top:bottom, left:right] = 255
    return values


@pytest.fixture(autouse=True)
def api_example_files(
    doctest_namespace: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    for name, (h, w, box) in {
        "cat1": (300, 400, (80, 120, 220, 300)),
        "cat2": (240, 320, (40, 40, 160, 200)),
    }.items():
        Image.fromarray(scene(h, w, box)).save(f"{name}.jpg")
        Image.fromarray(mask(h, w, box)).save(f"{name}.png")
    Image.fromarray(scene(300, 400, (100, 150, 230, 290))).save("a.jpg")
    doctest_namespace["pil_image"] = Image.open("a.jpg")
    doctest_namespace["array"] = scene(120, 160, (30, 40, 90, 120))
    yield
