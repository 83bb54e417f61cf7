"""Image folder + indexed-mask folder (pixel value = class), e.g. SegNet's CamVid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewseg.data.imageio import IMAGE_SUFFIXES, check_same_size, read_label_map, read_rgb
from fewseg.data.source import ClassSample, SegClass, SegmentationSource
from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.errors import FewSegError

MASK_SUFFIX = ".png"
MAX_LABEL = 255


def read_class_list(path: Path) -> list[tuple[int, str]]:
    """``index name`` lines → ``[(pixel value, name), ...]`` in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FewSegError(f"{path}: cannot read class list ({exc})") from None
    entries: list[tuple[int, str]] = []
    seen: set[int] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        value = int(parts[0]) if parts[0].isdigit() else -1
        if len(parts) != 2 or not 0 <= value <= MAX_LABEL:
            raise FewSegError(
                f"{path}:{number}: expected 'index name' with index 0..{MAX_LABEL}, "
                f"got {line.strip()!r}"
            )
        if value in seen:
            raise FewSegError(f"{path}:{number}: index {value} is listed twice")
        seen.add(value)
        entries.append((value, parts[1].strip()))
    if not entries:
        raise FewSegError(f"{path}: no classes listed")
    return entries


def _by_stem(directory: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    if not directory.is_dir():
        raise FewSegError(f"masks: {directory}: no such {what} directory")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        hidden = path.name.startswith(".")
        if hidden or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise FewSegError(f"masks: {path} and {found[path.stem]} have the same name")
        found[path.stem] = path
    return found


class IndexedMaskSource(SegmentationSource):
    """Images paired by file stem with 8-bit masks whose pixel value is the class.

    Classes come from the class list in file order, without the ignore value.
    """

    kind = "masks"

    def __init__(
        self,
        root: str | Path,
        images_dir: str | Path = "images",
        masks_dir: str | Path = "masks",
        classes_file: str | Path = "classes.txt",
        ignore: int | None = None,
        min_mask_pixels: int = 0,
    ) -> None:
        super().__init__(min_mask_pixels)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FewSegError(f"masks: {self.root}: no such directory")
        if ignore is not None and not 0 <= ignore <= MAX_LABEL:
            raise FewSegError(f"masks: ignore={ignore} must be in 0..{MAX_LABEL}")
        self.images_dir = self.root / images_dir
        self.masks_dir = self.root / masks_dir
        self.classes_file = self.root / classes_file
        self.ignore_value = ignore
        if not self.classes_file.is_file():
            raise FewSegError(f"masks: {self.classes_file}: no such class list")
        listed = read_class_list(self.classes_file)
        kept = [(value, name) for value, name in listed if value != ignore]
        self._classes = tuple(SegClass(i, name) for i, (_, name) in enumerate(kept))
        self._values = tuple(value for value, _ in kept)
        self._images, self._masks = self._pair()

    def _pair(self) -> tuple[dict[str, Path], dict[str, Path]]:
        images = _by_stem(self.images_dir, IMAGE_SUFFIXES, "images")
        masks = _by_stem(self.masks_dir, (MASK_SUFFIX,), "masks")
        for stem, path in images.items():
            if stem not in masks:
                raise FewSegError(f"masks: {path} has no mask {self.masks_dir / stem}.png")
        for stem, path in masks.items():
            if stem not in images:
                raise FewSegError(f"masks: {path} has no image in {self.images_dir}")
        if not images:
            raise FewSegError(f"masks: {self.images_dir}: no images")
        return images, masks

    def classes(self) -> Sequence[SegClass]:
        return self._classes

    def pixel_value(self, class_index: int) -> int:
        """The mask value that marks class ``class_index``."""
        if not 0 <= class_index < len(self._values):
            raise FewSegError(f"masks: no class with index {class_index}")
        return self._values[class_index]

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "root": str(self.root),
            "images": str(self.images_dir),
            "masks": str(self.masks_dir),
            "classes": str(self.classes_file),
            "ignore": self.ignore_value,
        }

    @cached_property
    def _counts(self) -> dict[int, dict[str, int]]:
        index_of_value = {value: i for i, value in enumerate(self._values)}
        counts: dict[int, dict[str, int]] = {c.index: {} for c in self._classes}
        for stem, path in self._masks.items():
            histogram = np.bincount(read_label_map(path).ravel(), minlength=MAX_LABEL + 1)
            for value in np.flatnonzero(histogram):
                if value == self.ignore_value:
                    continue
                if value not in index_of_value:
                    raise FewSegError(
                        f"{path}: pixel value {value} is neither a class in "
                        f"{self.classes_file} nor the ignore value"
                    )
                counts[index_of_value[value]][stem] = int(histogram[value])
        return counts

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return self._counts

    def load(self, image_id: str, class_index: int) -> ClassSample:
        value = self.pixel_value(class_index)
        if image_id not in self._images:
            raise FewSegError(f"masks: no image {image_id!r} in {self.images_dir}")
        image = read_rgb(self._images[image_id])
        mask_path = self._masks[image_id]
        labels = read_label_map(mask_path)
        check_same_size(image, labels, mask_path)
        ignore = np.zeros(labels.shape, dtype=bool)
        if self.ignore_value is not None:
            ignore = labels == self.ignore_value
        return ClassSample(image=image, mask=labels == value, ignore=ignore)


@SOURCES.register("masks", "image folder + indexed-mask folder + 'index name' class list")
def open_masks(root: str | None, options: SpecOptions, min_mask_pixels: int) -> IndexedMaskSource:
    if root is None:
        raise FewSegError("masks: needs a root directory, e.g. masks:PATH,ignore=255")
    return IndexedMaskSource(
        root,
        options.pop_str("images", "images") or "",
        options.pop_str("masks", "masks") or "",
        options.pop_str("classes", "classes.txt") or "",
        options.pop_int("ignore"),
        min_mask_pixels,
    )
