"""``unlabeled:ROOT``: any folder of images, for self-supervised meta-training.

No image has a label; meta-training draws pseudo-episodes from them (superpixels as
pseudo-classes: fewseg.episodes.pseudo). Images are found in ROOT and its subfolders
(hidden entries skipped), named by their path relative to ROOT. Every file is checked
when the folder is opened, so that an unreadable one stops the command before training
starts, naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewseg.data.imageio import IMAGE_SUFFIXES, read_rgb
from fewseg.data.source import ClassSample, FoldSplit, SegClass, SegmentationSource
from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.errors import FewSegError

MIN_SIDE = 16  # smaller images cannot make a superpixel episode


def image_files(root: Path) -> list[Path]:
    """The image files under ``root`` (by suffix), sorted; hidden files and folders skipped."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return found


def check_image(path: Path) -> None:
    """A one-line error unless ``path`` opens as an image of a usable size (header only)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FewSegError(f"{path}: cannot read image ({exc})") from None
    if min(width, height) < MIN_SIDE:
        raise FewSegError(f"{path}: image is {width}x{height}, smaller than {MIN_SIDE} pixels")


class UnlabeledSource(SegmentationSource):
    """A folder of images without labels: no classes; :meth:`load_image` reads one."""

    kind = "unlabeled"

    def __init__(self, root: str | Path) -> None:
        super().__init__(0)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FewSegError(f"unlabeled: {self.root}: no such directory")
        files = image_files(self.root)
        if not files:
            raise FewSegError(
                f"unlabeled: {self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it "
                "or its subfolders"
            )
        for path in files:
            check_image(path)
        self._paths = {str(p.relative_to(self.root)): p for p in files}

    def classes(self) -> Sequence[SegClass]:
        return ()

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return {}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "root": str(self.root), "images": len(self._paths)}

    def image_ids(self) -> tuple[str, ...]:
        return tuple(self._paths)

    def pseudo_image_ids(self, fold: str) -> tuple[str, ...]:
        return self.image_ids()

    def load_image(self, image_id: str) -> np.ndarray:
        try:
            path = self._paths[image_id]
        except KeyError:
            raise FewSegError(f"unlabeled: no image {image_id!r} in {self.root}") from None
        return read_rgb(path)

    def load(self, image_id: str, class_index: int) -> ClassSample:
        raise FewSegError(f"unlabeled: {self.root} has no labelled classes")

    @property
    def default_fold(self) -> str:
        return "all"

    def fold_split(self, fold: str) -> FoldSplit:
        return FoldSplit(fold, "unlabeled", (), ())


@SOURCES.register("unlabeled", "a folder of images without labels: self-supervised episodes")
def open_unlabeled(root: str | None, options: SpecOptions, min_mask_pixels: int) -> UnlabeledSource:
    if root is None:
        raise FewSegError("unlabeled: needs a folder, e.g. unlabeled:photos/")
    if min_mask_pixels:
        raise FewSegError("unlabeled: --min-mask-pixels needs masks; this folder has none")
    return UnlabeledSource(root)
