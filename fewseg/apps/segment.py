"""``fewseg segment``: adapt a learner to a user's support set and segment query images,
writing a mask and an overlay per query and ``summary.json``.

Every input is read and checked by :func:`prepare_inputs` before anything is written; each
output file is then written atomically, ``summary.json`` last. The segmentation itself is
the Python API's (fewseg.api): images squashed to the model's size, ImageNet-normalised,
the logits resized bilinearly to each query's own size and only then thresholded.
"""

from __future__ import annotations

import json
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
from fewseg.data.imageio import read_rgb
from fewseg.data.user_images import SupportPair
from fewseg.engine.figures import PREDICTION_COLOR, overlay
from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write

JPEG_QUALITY = 90
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
SUMMARY_NAME = "summary.json"

DEFINITIONS = {
    "mask": "8-bit PNG of the query's own size: 255 = foreground, 0 = background",
    "foreground_fraction": "predicted foreground pixels / all pixels, at the query's own size",
    "mean_confidence": (
        "mean over all pixels of max(p_fg, p_bg), the softmax probability of the predicted "
        "class from the (background, foreground) logits resized to the query's size; "
        "0.5 = undecided, 1 = certain"
    ),
}


@dataclass(frozen=True)
class SegmentSettings:
    batch_size: int = 8
    progress: bool = True


@dataclass(frozen=True)
class SegmentInputs:
    """Checked inputs: the support pairs, their tensors at the model's size, the query files."""

    pairs: tuple[SupportPair, ...]
    support: LabelledImages
    queries: tuple[Path, ...]


def prepare_inputs(
    pairs: Sequence[SupportPair], queries: Sequence[Path], size: int
) -> SegmentInputs:
    """Check everything a run reads (each query is decoded once) before any output exists."""
    if not pairs:
        raise FewSegError("no support image/mask pair given")
    if not queries:
        raise FewSegError("no query image given")
    support = support_tensors([p.sample for p in pairs], size, [str(p.mask_path) for p in pairs])
    for path in queries:
        read_rgb(path)
    return SegmentInputs(tuple(pairs), support, tuple(queries))


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


def output_names(query: Path) -> tuple[str, str]:
    return f"{MASKS_DIR}/{query.stem}.png", f"{OVERLAYS_DIR}/{query.stem}.jpg"


def segment(
    model: Model, inputs: SegmentInputs, out: str | Path, settings: SegmentSettings
) -> dict[str, Any]:
    """Adapt to the support set, write a mask and an overlay per query and ``summary.json``;
    returns the summary."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FewSegError(f"{out}: exists and is not a folder")
    segmenter = model.adapt_support(inputs.support)
    results = []
    bar = tqdm(
        total=len(inputs.queries),
        desc="segment",
        unit="img",
        disable=not settings.progress or len(inputs.queries) <= settings.batch_size,
    )
    for start in range(0, len(inputs.queries), settings.batch_size):
        paths = inputs.queries[start : start + settings.batch_size]
        images = [read_rgb(path) for path in paths]
        for path, image, log_odds in zip(
            paths, images, segmenter.predict_arrays(images), strict=True
        ):
            foreground = log_odds > 0
            confidence = torch.sigmoid(torch.from_numpy(np.abs(log_odds))).numpy()
            mask_name, overlay_name = output_names(path)
            mask = Image.fromarray(foreground.astype(np.uint8) * 255, mode="L")
            _write(out / mask_name, _save_image(mask, format="PNG"))
            blended = Image.fromarray(overlay(image, foreground, PREDICTION_COLOR))
            _write(out / overlay_name, _save_image(blended, format="JPEG", quality=JPEG_QUALITY))
            results.append(
                {
                    "image": str(path),
                    "width": image.shape[1],
                    "height": image.shape[0],
                    "mask": mask_name,
                    "overlay": overlay_name,
                    "foreground_fraction": float(foreground.mean(dtype=np.float64)),
                    "mean_confidence": float(confidence.mean(dtype=np.float64)),
                }
            )
        bar.update(len(paths))
    bar.close()
    trained = model.loaded.trained
    summary = {
        "fewseg_version": __version__,
        "learner": model.learner.settings(),
        **({"trained": trained} if trained else {}),
        "image_size": model.size,
        "definitions": DEFINITIONS,
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
