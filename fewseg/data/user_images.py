"""A user's own images and masks (``fewseg segment``): support pairs, query lists, folders.

Mask encodings (8-bit label maps: palette indices for palette images, luminance for any
other mode, 16-bit masks scaled to 0..255):

- values in {0, 1}: 1 is foreground;
- values in {0, 255}: 255 is foreground (so a {0, 255} mask never has ignore pixels);
- values in {0, 1, 255} with both 1 and 255 present: 1 is foreground, 255 is ignore;
- any other grey mask (soft edges, JPEG noise), given a threshold T: foreground is > T.

Without a threshold (the Python API) any other value is an error naming the file and the
values; so is, with one, a palette mask of other indices, a 0/1 mask with stray values, and
a "mask" that looks like a photo (mostly mid-grey, with many levels: image and mask swapped?).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewseg.data.imageio import IMAGE_SUFFIXES, check_same_size, open_image, read_rgb
from fewseg.data.source import ClassSample
from fewseg.errors import FewSegError

IGNORE_VALUE = 255
DEFAULT_MASK_THRESHOLD = 127  # a grey 8-bit mask: foreground > 127
MID_GREY = (32, 223)  # a photo has most pixels in this band, in many levels
PHOTO_MID_FRACTION = 0.5
PHOTO_LEVELS = 16
STRAY_RATIO = 100  # more 1s than this times the pixels above T: a 0/1 mask
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


def decode_mask(
    label: np.ndarray, path: str | Path, threshold: int | None = None, palette: bool = False
) -> tuple[np.ndarray, np.ndarray, str]:
    """(foreground, ignore, encoding name) of an 8-bit label map in an accepted encoding.

    ``threshold``: how a grey mask outside the exact encodings is read (foreground > T); None
    refuses it. ``palette``: the values are palette indices, which are never thresholded.
    """
    present = {int(v) for v in np.unique(label)}
    if present <= {0, 1}:
        return label == 1, np.zeros(label.shape, bool), "0/1"
    if present <= {0, IGNORE_VALUE}:
        return label == IGNORE_VALUE, np.zeros(label.shape, bool), "0/255"
    if present <= {0, 1, IGNORE_VALUE}:
        return label == 1, label == IGNORE_VALUE, "0/1, 255 = ignore"
    bad = sorted(present - {0, 1, IGNORE_VALUE})
    exact = "mask values must be 0/1, 0/255, or 0/1 with 255 = ignore"
    if threshold is None:
        raise FewSegError(f"{path}: {exact}; found {_format_values(bad)}")
    if palette:
        raise FewSegError(
            f"{path}: a palette mask's values are indices, not grey levels: {exact}; "
            f"found indices {_format_values(bad)}"
        )
    if np.count_nonzero(label == 1) > STRAY_RATIO * np.count_nonzero(label > threshold):
        # a 0/1 mask with a few stray values: thresholding would drop its foreground
        raise FewSegError(
            f"{path}: a 0/1 mask with other values: {exact}; found {_format_values(bad)}"
        )
    if reason := photo_evidence(label):
        raise FewSegError(
            f"{path}: looks like a photo, not a mask ({reason}); are the image and its mask "
            "swapped?"
        )
    return label > threshold, np.zeros(label.shape, bool), f"grey, > {threshold}"


def photo_evidence(label: np.ndarray) -> str | None:
    """Why an 8-bit grey "mask" is more likely a photo, or None: a mask (even a soft or
    JPEG one) is mostly near black and near white, a photo mostly mid-grey in many levels."""
    if label.size == 0:
        return None
    mid = float(np.mean((label >= MID_GREY[0]) & (label <= MID_GREY[1])))
    levels = len(np.unique(label))
    if mid > PHOTO_MID_FRACTION and levels > PHOTO_LEVELS:
        return f"{100 * mid:.0f}% of its pixels are mid-grey, in {levels} levels"
    return None


def read_mask_label(path: str | Path) -> tuple[np.ndarray, bool]:
    """A mask file as an 8-bit label map, and whether its values are palette indices:
    palette images by index, other modes by luminance, 16-bit masks scaled to 0..255."""
    image = open_image(Path(path))
    palette = image.mode in ("P", "PA")
    if palette:
        label = np.asarray(image if image.mode == "P" else image.getchannel(0))
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        label = np.asarray(image)
        top = int(label.max(initial=0))
        if top > 65535:
            raise FewSegError(f"{path}: mask values above 65535 are not supported")
        if top > 255:  # a 16-bit mask: 0..65535 onto 0..255
            label = np.round(label.astype(np.float64) / 257.0)
    else:
        label = np.asarray(image if image.mode in ("L", "1") else image.convert("L"))
    return label.astype(np.uint8), palette


def read_support_pair(
    image_path: str | Path, mask_path: str | Path, threshold: int | None = None
) -> SupportPair:
    """Read an image and its mask; the mask must fit the image and hold some foreground.
    ``threshold``: how a grey mask outside the exact encodings is read (None: refused)."""
    image = read_rgb(image_path)
    label, palette = read_mask_label(mask_path)
    check_same_size(image, label, mask_path)
    foreground, ignore, encoding = decode_mask(label, mask_path, threshold, palette)
    if not foreground.any():
        above = f" (no value above the threshold {threshold})" if threshold is not None else ""
        raise FewSegError(f"{mask_path}: support mask has no foreground pixel{above}")
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


@dataclass(frozen=True)
class Query:
    """A query image, its path relative to the deepest folder holding every query
    (``day/x.jpg`` for ``photos/day/x.jpg``) and the name its outputs take: that without
    the suffix (``day/x``), unless another query has the same (then ``day/x.jpg``)."""

    path: Path
    name: str
    relative: str


def query_images_in(directory: Path, warn: Warn = warn_on_stderr) -> list[Path]:
    """The query images of a folder, sorted: its images, less the masks of image+mask pairs
    (``images/`` + ``masks/`` subfolders: the images; a ``<stem>.png`` beside a
    ``<stem>.jpg``: its mask)."""
    if (directory / "images").is_dir() and (directory / "masks").is_dir():
        return images_in(directory / "images", warn)
    found = images_in(directory, warn)
    masks = set()
    for group in _group_by_stem(found).values():
        pngs = [p for p in group if p.suffix.lower() == MASK_SUFFIX]
        if len(pngs) == 1 and len(group) > 1:
            masks.add(pngs[0])
    return [path for path in found if path not in masks]


def collect_queries(paths: Sequence[str | Path], warn: Warn = warn_on_stderr) -> list[Query]:
    """Query files in the given order, folders expanded to their images (sorted, see
    :func:`query_images_in`), each named by its path relative to the deepest folder holding
    them all, so that no two write the same file."""
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = query_images_in(given, warn)
            if not found:
                raise FewSegError(f"{given}: no images in this folder")
            files.extend(found)
        else:
            files.append(given)
    unique = list(dict.fromkeys(files))
    if not unique:
        return []
    absolute = [Path(os.path.abspath(path)) for path in unique]
    root = Path(os.path.commonpath([path.parent for path in absolute]))
    relatives = [str(path.relative_to(root)) for path in absolute]
    names = [str(Path(relative).with_suffix("")) for relative in relatives]
    taken: dict[str, int] = {}
    for name in names:
        taken[name] = taken.get(name, 0) + 1
    queries = [
        # x.jpg and x.png in one folder: each keeps its suffix in its name (x.jpg, x.png)
        Query(path, name if taken[name] == 1 else relative, relative)
        for path, relative, name in zip(unique, relatives, names, strict=True)
    ]
    named: dict[str, Path] = {}
    for query in queries:
        if (other := named.setdefault(query.name, query.path)) != query.path:
            raise FewSegError(f"{other} and {query.path} would both be named {query.name!r}")
    return queries
