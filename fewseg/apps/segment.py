"""``fewseg segment``: adapt a learner to a user's support set and segment query images,
writing a mask and an overlay per query (and on request a probability map and a COCO RLE
file) and ``summary.json``.

Every input is read and checked by :func:`prepare_inputs` (and the output folder by
:func:`check_out`) before anything is written. The files are written into a hidden
folder beside OUT, which then takes OUT's place in one step: OUT holds one whole run or
none (an earlier one, with ``--overwrite``). The segmentation itself is the Python API's
(fewseg.api): images squashed (or padded) to the model's size, ImageNet-normalised, the
logits resized bilinearly to each query's own size and only then thresholded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fewseg import __version__
from fewseg.api import Model, support_tensors
from fewseg.apps.exports import COCO_NAME, DEFAULT_CLASS_NAME, NamedMask, coco_document
from fewseg.data.imageio import read_rgb
from fewseg.data.user_images import Query, SupportPair, collect_queries
from fewseg.engine.figures import PREDICTION_COLOR, overlay
from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write, replace_folder
from fewseg.refinement.pipeline import has_image_features

JPEG_QUALITY = 90
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
PROBABILITIES_DIR = "probabilities"
SUMMARY_NAME = "summary.json"
FORMATS = ("png", "coco", "both")

DEFINITIONS = {
    "mask": "8-bit PNG of the query's own size: 255 = foreground, 0 = background",
    "probabilities": "8-bit PNG of the query's own size: round(255 * p_fg)",
    "coco": (
        "COCO instances JSON: each query an image (file_name relative to the folder of all "
        "queries), each non-empty mask an annotation of category 1 with its RLE (pycocotools)"
    ),
    "foreground_fraction": "predicted foreground pixels / all pixels, at the query's own size",
    "mean_confidence": (
        "mean over all pixels of max(p_fg, p_bg), the softmax probability of the predicted "
        "class from the (background, foreground) logits resized to the query's size; "
        "0.5 = undecided, 1 = certain"
    ),
    "presence": (
        "0..1: the cosine between the probability-weighted mean encoder feature of the "
        "query's predicted region and the support's foreground prototype; low when the "
        "class is absent (below --min-presence the mask is empty)"
    ),
}


@dataclass(frozen=True)
class SegmentSettings:
    batch_size: int = 8
    progress: bool = True
    format: str = "png"  # png: masks/*.png; coco: coco.json; both
    probabilities: bool = False  # also probabilities/*.png
    overwrite: bool = False  # replace a non-empty OUT
    class_name: str = DEFAULT_CLASS_NAME  # the COCO category's name

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise FewSegError(f"unknown format {self.format!r} (expected png, coco or both)")


@dataclass(frozen=True)
class SegmentInputs:
    """Checked inputs: the support pairs, their tensors at the model's size, the queries."""

    pairs: tuple[SupportPair, ...]
    support: LabelledImages
    queries: tuple[Query, ...]


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A bar on stderr for every run of more than one image."""
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total <= 1)


def prepare_inputs(
    pairs: Sequence[SupportPair],
    queries: Sequence[Query | Path],
    size: int,
    progress: bool = False,
    resize: str = "squash",
) -> SegmentInputs:
    """Check everything a run reads (each query is decoded once) before any output exists.
    Paths are named as :func:`fewseg.data.user_images.collect_queries` names them."""
    if not pairs:
        raise FewSegError("no support image/mask pair given")
    if not queries:
        raise FewSegError("no query image given")
    if not all(isinstance(query, Query) for query in queries):
        queries = collect_queries(queries)
    names = [str(p.mask_path) for p in pairs]
    support = support_tensors([p.sample for p in pairs], size, names, resize)
    with progress_bar(len(queries), "check", progress) as bar:
        for query in queries:
            read_rgb(query.path)
            bar.update()
    return SegmentInputs(tuple(pairs), support, tuple(queries))


def check_out(out: str | Path, overwrite: bool) -> Path:
    """OUT must be absent or an empty folder, or ``overwrite`` be given (checked before
    anything is read or written)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FewSegError(f"{out}: exists and is not a folder")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise FewSegError(
            f"{out}: not empty (an earlier run's files?); pass --overwrite to replace it, "
            "or choose another --out"
        )
    return out


Writer = Callable[[BinaryIO], None]


def _write(path: Path, write: Writer) -> None:
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise FewSegError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _save_image(image: Image.Image, **options: Any) -> Writer:
    def write(handle: BinaryIO) -> None:
        image.save(handle, **options)

    return write


def output_names(query: Query) -> tuple[str, str, str]:
    """(mask, overlay, probabilities) file names of a query, relative to OUT."""
    return (
        f"{MASKS_DIR}/{query.name}.png",
        f"{OVERLAYS_DIR}/{query.name}.jpg",
        f"{PROBABILITIES_DIR}/{query.name}.png",
    )


def staging_folder(out: Path) -> Path:
    """A hidden folder beside OUT (same file system) where a run writes before it takes
    OUT's place; created with the permissions of an ordinary folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as exc:
        raise FewSegError(f"{out.parent}: cannot write ({exc.strerror or exc})") from None
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


def segment(
    model: Model, inputs: SegmentInputs, out: str | Path, settings: SegmentSettings
) -> dict[str, Any]:
    """Adapt to the support set, write a mask and an overlay per query and ``summary.json``
    (see :data:`DEFINITIONS`) into a staging folder that then takes OUT's place; returns
    the summary."""
    out = check_out(out, settings.overwrite)
    staging = staging_folder(out)
    try:
        summary = _segment_into(model, inputs, staging, settings)
        try:
            replace_folder(staging, out)
        except OSError as exc:
            raise FewSegError(f"{out}: cannot replace ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _segment_into(
    model: Model, inputs: SegmentInputs, out: Path, settings: SegmentSettings
) -> dict[str, Any]:
    segmenter = model.adapt_support(inputs.support)
    scores_presence = has_image_features(model.learner)
    results = []
    coco: list[NamedMask] = []
    write_png = settings.format in ("png", "both")
    with progress_bar(len(inputs.queries), "segment", settings.progress) as bar:
        for start in range(0, len(inputs.queries), settings.batch_size):
            queries = inputs.queries[start : start + settings.batch_size]
            images = [read_rgb(query.path) for query in queries]
            if scores_presence:
                maps, presence = segmenter.predict_with_presence(images)
            else:
                maps, presence = segmenter.predict_arrays(images), [None] * len(images)
            for query, image, log_odds, present in zip(
                queries, images, maps, presence, strict=True
            ):
                foreground = log_odds > 0
                confidence = torch.sigmoid(torch.from_numpy(np.abs(log_odds))).numpy()
                mask_name, overlay_name, probabilities_name = output_names(query)
                files = {}
                if write_png:
                    mask = Image.fromarray(foreground.astype(np.uint8) * 255, mode="L")
                    _write(out / mask_name, _save_image(mask, format="PNG"))
                    files["mask"] = mask_name
                blended = Image.fromarray(overlay(image, foreground, PREDICTION_COLOR))
                _write(
                    out / overlay_name,
                    _save_image(blended, format="JPEG", quality=JPEG_QUALITY),
                )
                files["overlay"] = overlay_name
                if settings.probabilities:
                    probability = torch.sigmoid(torch.from_numpy(log_odds)).numpy()
                    levels = np.round(probability * 255).astype(np.uint8)
                    _write(
                        out / probabilities_name,
                        _save_image(Image.fromarray(levels, mode="L"), format="PNG"),
                    )
                    files["probabilities"] = probabilities_name
                if settings.format in ("coco", "both"):
                    coco.append(NamedMask(query.name, query.relative, foreground))
                results.append(
                    {
                        "image": str(query.path),
                        "width": image.shape[1],
                        "height": image.shape[0],
                        **files,
                        "foreground_fraction": float(foreground.mean(dtype=np.float64)),
                        "mean_confidence": float(confidence.mean(dtype=np.float64)),
                        **({"presence": present} if scores_presence else {}),
                    }
                )
            bar.update(len(queries))
    if coco:
        document = coco_document(coco, settings.class_name)
        _write(out / COCO_NAME, lambda handle: handle.write(json.dumps(document).encode()))
    trained = model.loaded.trained
    definitions = {
        key: text
        for key, text in DEFINITIONS.items()
        if (key != "mask" or write_png)
        and (key != "probabilities" or settings.probabilities)
        and (key != "coco" or coco)
        and (key != "presence" or scores_presence)
    }
    summary = {
        "fewseg_version": __version__,
        "learner": model.learner.settings(),
        **({"trained": trained} if trained else {}),
        "image_size": model.size,
        "inference": model.inference.to_dict(),
        "class_name": settings.class_name,
        **({"coco": COCO_NAME} if coco else {}),
        "definitions": definitions,
        "support": [
            {
                "image": str(pair.image_path),
                "mask": str(pair.mask_path),
                "encoding": pair.encoding,
                "foreground_pixels": int(pair.sample.mask.sum()),
                "ignore_pixels": int(pair.sample.ignore.sum()),
            }
            for pair in inputs.pairs
        ],
        "queries": results,
    }
    text = json.dumps(summary, indent=2) + "\n"
    _write(out / SUMMARY_NAME, lambda handle: handle.write(text.encode()))
    return summary
