"""A user's own images and masks (``fewseg segment``): support pairs, query lists, folders.

Mask encodings (8-bit label maps, read as :func:`fewseg.data.imageio.read_label_map` does):

- values in {0, 1}: 1 is foreground;
- values in {0, 255}: 255 is foreground (so a {0, 255} mask never has ignore pixels);
- values in {0, 1, 255} with both 1 and 255 present: 1 is foreground, 255 is ignore.

Any other value is an error naming the file and the values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewseg.data.imageio import IMAGE_SUFFIXES, check_same_size, read_label_map, read_rgb
from fewseg.data.source import ClassSample
from fewseg.errors import FewSegError

IGNORE_VALUE = 255
MASK_SUFFIX = ".png"  # the mask of a flat support folder: <stem>.png beside <stem>.jpg

Warn = Callable[[str], None]


def warn_on_stderr(message: str) -> None:
    print(f"fewseg: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class SupportPair:
    """One labelled support example, read and checked."""

    image_path: Path
    mask_path: Path
    sample: ClassSample
    encoding: str


def _format_values(values: Sequence[int], shown: int = 6) -> str:
    text = ", ".join(str(v) for v in values[:shown])
    return text + (f" and {len(values) - shown} more" if len(values) > shown else "")


def decode_mask(label: np.ndarray, path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(foreground, ignore, encoding name) of an 8-bit label map in an accepted encoding."""
    present = {int(v) for v in np.unique(label)}
    if present <= {0, 1}:
        return label == 1, np.zeros(label.shape, bool), "0/1"
    if present <= {0, IGNORE_VALUE}:
        return label == IGNORE_VALUE, np.zeros(label.shape, bool), "0/255"
    if present <= {0, 1, IGNORE_VALUE}:
        return label == 1, label == IGNORE_VALUE, "0/1, 255 = ignore"
    bad = sorted(present - {0, 1, IGNORE_VALUE})
    raise FewSegError(
        f"{path}: mask values must be 0/1, 0/255, or 0/1 with 255 = ignore; "
        f"found {_format_values(bad)}"
    )


def read_support_pair(image_path: str | Path, mask_path: str | Path) -> SupportPair:
    """Read an image and its mask; the mask must fit the image and hold some foreground."""
    image = read_rgb(image_path)
    label = read_label_map(mask_path)
    check_same_size(image, label, mask_path)
    foreground, ignore, encoding = decode_mask(label, mask_path)
    if not foreground.any():
        raise FewSegError(f"{mask_path}: support mask has no foreground pixel")
    return SupportPair(
        Path(image_path), Path(mask_path), ClassSample(image, foreground, ignore), encoding
    )


def looks_like_image(path: Path) -> bool:
    """True for an image suffix (a corrupt file then fails when read, naming it), else
    whether PIL recognises the file's header."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError):
        return False


def images_in(directory: Path, warn: Warn = warn_on_stderr) -> list[Path]:
    """The image files of a folder, sorted by name. Hidden entries and subfolders are
    ignored; other files that are not images are skipped with a warning."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if looks_like_image(path):
            found.append(path)
        else:
            warn(f"{path}: not an image, skipped")
    return found


def _group_by_stem(paths: Iterable[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(path.stem, []).append(path)
    return groups


def _one_per_stem(paths: Iterable[Path]) -> dict[str, Path]:
    groups = _group_by_stem(paths)
    for same in groups.values():
        if len(same) > 1:
            raise FewSegError(f"{same[0]} and {same[1]} have the same name: which one is meant?")
    return {stem: same[0] for stem, same in groups.items()}


def support_pairs_in(directory: str | Path, warn: Warn = warn_on_stderr) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a support folder, in stem order.

    Either ``images/`` and ``masks/`` subfolders with matching file stems, or a flat folder
    with ``<stem>.<ext>`` images beside ``<stem>.png`` masks (FSS-1000 style).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FewSegError(f"{directory}: no such support folder")
    if (directory / "images").is_dir() and (directory / "masks").is_dir():
        images = _one_per_stem(images_in(directory / "images", warn))
        masks = _one_per_stem(images_in(directory / "masks", warn))
        for stem in sorted(images.keys() ^ masks.keys()):
            lone = images.get(stem) or masks[stem]
            partner = "mask in masks/" if stem in images else "image in images/"
            raise FewSegError(f"{lone}: no {partner} with the stem {stem!r}")
        pairs = [(images[stem], masks[stem]) for stem in sorted(images)]
    else:
        pairs = []
        for stem, group in sorted(_group_by_stem(images_in(directory, warn)).items()):
            masks = [p for p in group if p.suffix.lower() == MASK_SUFFIX]
            images = [p for p in group if p.suffix.lower() != MASK_SUFFIX]
            if len(masks) != 1 or len(images) != 1:
                names = ", ".join(p.name for p in group)
                raise FewSegError(
                    f"{directory}: stem {stem!r} needs one image and one {MASK_SUFFIX} mask, "
                    f"found {names} (or use images/ and masks/ subfolders)"
                )
            pairs.append((images[0], masks[0]))
    if not pairs:
        raise FewSegError(f"{directory}: no image/mask pairs found")
    return pairs


def query_paths(paths: Sequence[str | Path], warn: Warn = warn_on_stderr) -> list[Path]:
    """Query files in the given order, folders expanded to their images (sorted).

    Output files are named by stem, so two different queries may not share one.
    """
    queries: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = images_in(given, warn)
            if not found:
                raise FewSegError(f"{given}: no images in this folder")
            queries.extend(found)
        else:
            queries.append(given)
    unique = list(dict.fromkeys(queries))
    for same in _group_by_stem(unique).values():
        if len(same) > 1:
            raise FewSegError(
                f"{same[0]} and {same[1]} would both write masks/{same[0].stem}.png: "
                "rename one of them"
            )
    return unique
