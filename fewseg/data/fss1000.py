"""FSS-1000: ``ROOT/<class>/<n>.jpg`` with its mask ``<n>.png`` (white = object).

Split files (``train=``, ``val=``, ``test=``) list one class name per line, relative to ROOT or
absolute. With a train file, the classes are exactly those named in the given files; without
one, they are every class directory, and the meta-train classes of a fold are the classes in
neither the test nor the val file. Class index = position in the sorted class names.

``splits=DIR`` reads HSNet's split folder (``data/splits/fss`` of juhongm999/hsnet):
``DIR/trn.txt``, ``DIR/val.txt`` and ``DIR/test.txt`` (520, 240 and 240 classes; CRLF line
ends are fine) as the train, val and test files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fewseg.data.imageio import check_same_size, read_rgb
from fewseg.data.source import ClassSample, FoldSplit, SegClass, SegmentationSource
from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.errors import FewSegError

SPLIT_NAMES = ("train", "val", "test")
HSNET_SPLIT_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}
FOLD_CONVENTION = "fss1000-split"


def read_binary_mask(path: Path) -> np.ndarray:
    """Foreground = grayscale value above 127, whatever the PNG's mode."""
    gray = np.asarray(Image.fromarray(read_rgb(path)).convert("L"))
    return gray > 127


def read_class_list(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FewSegError(f"{path}: no such split file")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FewSegError(f"{path}: cannot read split file ({exc})") from None
    names = tuple(dict.fromkeys(n for line in lines if (n := line.strip().rstrip("/"))))
    if not names:
        raise FewSegError(f"{path}: the split file names no classes")
    return names


def list_pairs(class_dir: Path) -> tuple[str, ...]:
    """Stems ``n`` of the ``n.jpg`` + ``n.png`` pairs of one class directory."""
    stems = sorted(p.stem for p in class_dir.glob("*.jpg") if p.is_file())
    for stem in stems:
        if not (class_dir / f"{stem}.png").is_file():
            raise FewSegError(f"{class_dir / stem}.jpg: no mask {stem}.png beside it")
    if not stems:
        raise FewSegError(
            f"{class_dir}: class directory without <n>.jpg + <n>.png pairs "
            "(is ROOT the directory that holds the class directories?)"
        )
    return tuple(stems)


class Fss1000Source(SegmentationSource):
    """One class per directory; each image is annotated for its own class only."""

    kind = "fss1000"

    def __init__(
        self,
        root: str | Path,
        train: str | Path | None = None,
        val: str | Path | None = None,
        test: str | Path | None = None,
        min_mask_pixels: int = 0,
    ) -> None:
        super().__init__(min_mask_pixels)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FewSegError(f"{self.root}: no such directory (expected the FSS-1000 root)")
        given = {"train": train, "val": val, "test": test}
        self.split_files = {k: self.root / v for k, v in given.items() if v}
        self.split_names = {k: read_class_list(p) for k, p in self.split_files.items()}
        self._check_split_names()
        if "train" in self.split_names:
            names = {n for listed in self.split_names.values() for n in listed}
        else:
            names = {
                p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
            }
        if not names:
            raise FewSegError(f"{self.root}: no class directories")
        self._names = tuple(sorted(names))
        self._index = {name: i for i, name in enumerate(self._names)}
        self._pairs = {name: list_pairs(self.root / name) for name in self._names}

    def _check_split_names(self) -> None:
        seen: dict[str, str] = {}
        for split, names in self.split_names.items():
            path = self.split_files[split]
            for name in names:
                if not (self.root / name).is_dir():
                    raise FewSegError(f"{path}: unknown class {name!r} (no {self.root / name})")
                if name in seen:
                    other = self.split_files[seen[name]]
                    raise FewSegError(f"class {name!r} is in both {other} and {path}")
                seen[name] = split

    def classes(self) -> Sequence[SegClass]:
        return tuple(SegClass(i, name) for i, name in enumerate(self._names))

    def _split_indices(self, split: str) -> tuple[int, ...]:
        return tuple(sorted(self._index[n] for n in self.split_names[split]))

    def _image_paths(self, image_id: str) -> tuple[str, Path, Path]:
        name, _, stem = image_id.rpartition("/")
        if stem not in self._pairs.get(name, ()):
            raise FewSegError(f"fss1000: unknown image {image_id!r}")
        class_dir = self.root / name
        return name, class_dir / f"{stem}.jpg", class_dir / f"{stem}.png"

    @cached_property
    def _counts(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {}
        for name, stems in self._pairs.items():
            ids = [f"{name}/{stem}" for stem in stems]
            if self.min_mask_pixels > 0:
                counts[self._index[name]] = {
                    i: int(read_binary_mask(self._image_paths(i)[2]).sum()) for i in ids
                }
            else:
                counts[self._index[name]] = dict.fromkeys(ids, 1)
        return counts

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return self._counts

    def load(self, image_id: str, class_index: int) -> ClassSample:
        """The mask is empty when ``class_index`` is not the image's own class."""
        name, image_path, mask_path = self._image_paths(image_id)
        if not 0 <= class_index < len(self._names):
            raise FewSegError(
                f"fss1000: class index {class_index} is not in 0..{len(self._names) - 1}"
            )
        image = read_rgb(image_path)
        mask = read_binary_mask(mask_path)
        check_same_size(image, mask, mask_path)
        if self._index[name] != class_index:
            mask = np.zeros_like(mask)
        return ClassSample(image, mask, np.zeros_like(mask))

    @property
    def default_fold(self) -> str:
        """``test`` with a test split file, else ``all`` (FSS-1000 has no numbered folds)."""
        return "test" if "test" in self.split_names else "all"

    def fold_split(self, fold: str) -> FoldSplit:
        """``all``: every class is tested; ``test`` / ``val``: the classes of that split file."""
        if fold == "all":
            return super().fold_split(fold)
        if fold not in ("test", "val"):
            raise FewSegError(f"fss1000: unknown fold {fold!r}: expected all, test or val")
        if fold not in self.split_names:
            raise FewSegError(f"fss1000: fold {fold!r} needs the spec option {fold}=FILE")
        test = self._split_indices(fold)
        if "train" in self.split_names:
            train = self._split_indices("train")
        else:
            held_out = {
                self._index[n] for s in ("val", "test") for n in self.split_names.get(s, ())
            }
            train = tuple(i for i in range(len(self._names)) if i not in held_out)
        return FoldSplit(fold, FOLD_CONVENTION, train, test)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "root": str(self.root),
            **{f"{k}_file": str(p) for k, p in self.split_files.items()},
        }


@SOURCES.register(
    "fss1000",
    "FSS-1000 class directories <class>/<n>.jpg + <n>.png: "
    "fss1000:ROOT[,train=FILE][,val=FILE][,test=FILE] or fss1000:ROOT,splits=HSNET_SPLIT_DIR",
)
def open_fss1000(root: str | None, options: SpecOptions, min_mask_pixels: int) -> Fss1000Source:
    if root is None:
        raise FewSegError(f"{options.spec}: needs the FSS-1000 directory (fss1000:ROOT)")
    files: dict[str, str | Path | None] = {name: options.pop_str(name) for name in SPLIT_NAMES}
    split_dir = options.pop_str("splits")
    if split_dir is not None:
        given = [f"{name}=" for name, path in files.items() if path is not None]
        if given:
            raise FewSegError(f"{options.spec}: give splits= or {', '.join(given)}, not both")
        if not (Path(root) / split_dir).is_dir():
            raise FewSegError(
                f"{Path(root) / split_dir}: no such split directory (HSNet's data/splits/fss)"
            )
        files = {name: Path(split_dir) / file for name, file in HSNET_SPLIT_FILES.items()}
    return Fss1000Source(root, **files, min_mask_pixels=min_mask_pixels)
