"""``fewseg segment``: adapt a learner to a user's support set and segment query images.

Every input is read and checked by :func:`prepare_inputs` before anything is written; each
output file is then written atomically, ``summary.json`` last. Images are preprocessed as
in evaluation (squashed to size x size, ImageNet-normalised); the logits are resized
bilinearly to each query's own size and only then thresholded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fewseg import __version__
from fewseg.data.imageio import read_rgb
from fewseg.data.source import ClassSample
from fewseg.data.user_images import SupportPair
from fewseg.engine.figures import PREDICTION_COLOR, overlay
from fewseg.episodes.tensors import SupportSet
from fewseg.episodes.transforms import resize_transform, sample_to_tensors
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write
from fewseg.learners.base import Learner
from fewseg.models.segmenter import foreground_logit

DEFAULT_SIZE = 400  # without a checkpoint or --size: the evaluation size for real data
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
    device: str = "cpu"
    progress: bool = True


@dataclass(frozen=True)
class SegmentInputs:
    """Checked inputs: the support pairs, their tensors at ``size``, the query files."""

    pairs: tuple[SupportPair, ...]
    support: SupportSet
    queries: tuple[Path, ...]
    size: int


def support_set(pairs: Sequence[SupportPair], size: int) -> SupportSet:
    """The support tensors at size x size; each mask must keep some foreground."""
    transform = resize_transform(size)
    tensors = [sample_to_tensors(pair.sample, transform) for pair in pairs]
    for pair, (_, mask, _) in zip(pairs, tensors, strict=True):
        if not mask.any():
            raise FewSegError(
                f"{pair.mask_path}: the mask's foreground vanishes at {size}x{size}; "
                "pass a larger --size"
            )
    images, masks, ignore = zip(*tensors, strict=True)
    return SupportSet(torch.stack(images), torch.stack(masks), torch.stack(ignore))


def prepare_inputs(
    pairs: Sequence[SupportPair], queries: Sequence[Path], size: int
) -> SegmentInputs:
    """Check everything a run reads (each query is decoded once) before any output exists."""
    if not pairs:
        raise FewSegError("no support image/mask pair given")
    if not queries:
        raise FewSegError("no query image given")
    support = support_set(pairs, size)
    for path in queries:
        read_rgb(path)
    return SegmentInputs(tuple(pairs), support, tuple(queries), size)


def query_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """The query preprocessed exactly as an evaluation query is: [3, size, size]."""
    empty = np.zeros(image.shape[:2], bool)
    tensor, _, _ = sample_to_tensors(ClassSample(image, empty, empty), resize_transform(size))
    return tensor


def foreground_and_confidence(
    logits: torch.Tensor, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image's logits ([1,h,w] foreground or [2,h,w] (background, foreground), as a
    predictor returns them) → foreground bool [H,W] and max(p_fg, p_bg) [H,W], the
    foreground's log-odds resized bilinearly to (H, W) first; ties go to background."""
    log_odds = foreground_logit(logits[None].float())[None]
    resized = F.interpolate(log_odds, (height, width), mode="bilinear")[0, 0]
    return (resized > 0).numpy(), torch.sigmoid(resized.abs()).numpy()


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
    learner: Learner,
    inputs: SegmentInputs,
    out: str | Path,
    settings: SegmentSettings,
    trained: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Adapt to the support set, write a mask and an overlay per query and ``summary.json``;
    returns the summary."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FewSegError(f"{out}: exists and is not a folder")
    device = torch.device(settings.device)
    learner.to(device).eval()
    predict = learner.adapt(inputs.support.to(device))
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
        batch = torch.stack([query_tensor(image, inputs.size) for image in images])
        with torch.no_grad():
            logits = predict(batch.to(device)).cpu()
        for path, image, logit in zip(paths, images, logits, strict=True):
            foreground, confidence = foreground_and_confidence(logit, *image.shape[:2])
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
    summary = {
        "fewseg_version": __version__,
        "learner": learner.settings(),
        **({"trained": trained} if trained else {}),
        "image_size": inputs.size,
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
