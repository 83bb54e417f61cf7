"""HSNet's per-fold image lists (``data/splits/`` of juhongm999/hsnet, also used by DCAMA).

``pascal/{trn,val}/fold{0..3}.txt``: one ``<stem>__<VOC label>`` per line
(``2007_000033__01``): the images of the fold's classes, each with one of its classes.

``coco/{trn,val}/fold{0..3}.pkl``: a pickled dict, class index 0..79 → list of image paths
relative to the ``COCO2014`` folder (``val2014/COCO_val2014_000000429717.jpg``); a fold's
file lists the images of its classes and leaves the other classes' lists empty.

Both are read as class index → image names, merged over the four folds of the split (the
``val`` folds together cover every class once; the ``trn`` folds three times).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewseg.errors import FewSegError

HSNET_FOLDS = 4
HSNET_SPLITS = {"train": "trn", "val": "val"}


class _DataOnly(pickle.Unpickler):
    """Unpickles plain containers and strings only: a split file needs no code, and a file
    that asks for any (a class, a function) is refused rather than run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}")


def _fold_files(directory: Path, split: str, suffix: str) -> list[Path]:
    if split not in HSNET_SPLITS:
        raise FewSegError(f"HSNet splits: unknown split {split!r} (train or val)")
    folder = directory / HSNET_SPLITS[split]
    if not folder.is_dir():
        raise FewSegError(f"{folder}: no such directory (expected HSNet's split folder)")
    files = [folder / f"fold{k}{suffix}" for k in range(HSNET_FOLDS)]
    for path in files:
        if not path.is_file():
            raise FewSegError(f"{path}: no such split file")
    return files


def _merge(
    files: list[Path], read: Callable[[Path], dict[int, list[str]]]
) -> dict[int, tuple[str, ...]]:
    merged: dict[int, dict[str, None]] = {}
    for path in files:
        for class_index, names in read(path).items():
            merged.setdefault(class_index, {}).update(dict.fromkeys(names))
    return {c: tuple(names) for c, names in sorted(merged.items())}


def read_pascal_folds(directory: Path, split: str, n_classes: int) -> dict[int, tuple[str, ...]]:
    """Class index (VOC label - 1) → image stems, from ``directory/{trn,val}/fold*.txt``."""

    def read(path: Path) -> dict[int, list[str]]:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise FewSegError(f"{path}: cannot read split file ({exc})") from None
        found: dict[int, list[str]] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            stem, sep, label = line.strip().rpartition("__")
            if not sep or not stem or not label.isdigit() or not 1 <= int(label) <= n_classes:
                raise FewSegError(
                    f"{path}:{number}: expected '<image>__<label 1..{n_classes}>', "
                    f"got {line.strip()!r}"
                )
            found.setdefault(int(label) - 1, []).append(stem)
        return found

    return _merge(_fold_files(directory, split, ".txt"), read)


def read_coco_folds(directory: Path, split: str, n_classes: int) -> dict[int, tuple[str, ...]]:
    """Class index → image paths (relative to COCO2014), from ``directory/{trn,val}/fold*.pkl``."""

    def read(path: Path) -> dict[int, list[str]]:
        try:
            data = _DataOnly(io.BytesIO(path.read_bytes())).load()
        except Exception as exc:  # unpickling bad bytes raises almost anything
            raise FewSegError(f"{path}: not an HSNet split file ({exc})") from None
        valid = isinstance(data, dict) and all(
            isinstance(c, int)
            and 0 <= c < n_classes
            and isinstance(names, list)
            and all(isinstance(n, str) for n in names)
            for c, names in data.items()
        )
        if not valid:
            raise FewSegError(
                f"{path}: not an HSNet split file (expected a dict: class index "
                f"0..{n_classes - 1} → list of image paths)"
            )
        return data

    return _merge(_fold_files(directory, split, ".pkl"), read)
