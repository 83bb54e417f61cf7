"""fewseg's front door: load a learner, adapt it to a few labelled examples, segment.

>>> import fewseg
>>> model = fewseg.load("baseline")
>>> segment = model.adapt(["cat1.jpg", "cat2.jpg"], ["cat1.png", "cat2.png"])
>>> masks = segment(["a.jpg"])                # HxW bool arrays, each at its image's size
>>> probabilities = segment.probabilities(["a.jpg"])
>>> scores = segment.presence(["a.jpg"])     # per query, 0..1: is the class there at all?

Images are paths, PIL images or HxWx3 uint8 arrays (grayscale and RGBA are converted);
masks are paths, PIL images or HxW arrays: bool, or 8-bit with 0/1 or 0/255 (foreground =
1 or 255), or 0/1 with 255 = ignore. Images are squashed (or, with
``InferenceOptions(resize="pad")``, padded) to the model's square size (the size it was
trained at; 400 for a training-free learner) for the network, and each
query's log-odds brought back to its own size by the inference options
(:class:`fewseg.refinement.options.InferenceOptions`: by default the learner's log-odds
averaged with a nearest-neighbour matching of the query's features to the support's, for
the query and a copy enlarged 1.2 times, averaged, then a guided filter with the full-size
query as guide averaged with a vote over the query's superpixels, so that mask edges
follow the image's, then the mask's weakly predicted regions dropped; other refinements
and ``min_presence`` as chosen). Any bad input is a :class:`FewSegError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fewseg.data.imageio import check_same_size, read_label_map, read_rgb
from fewseg.data.source import ClassSample
from fewseg.data.user_images import decode_mask
from fewseg.engine.loading import LoadedLearner, load_learner
from fewseg.engine.precision import autocast
from fewseg.episodes.tensors import LabelledImages
from fewseg.episodes.transforms import resize_transform, sample_to_tensors, unpadded
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner
from fewseg.models.segmenter import foreground_logit
from fewseg.refinement.options import InferenceOptions
from fewseg.refinement.pipeline import RefinedPredictor, finished, refined_adapt, rgb

ImageLike = str | Path | Image.Image | np.ndarray
MaskLike = str | Path | Image.Image | np.ndarray
BATCH_SIZE = 8  # query images through the network at once


def load(
    learner: str | Path = "baseline",
    device: str | None = None,
    weights: str | Path | None = None,
    size: int | None = None,
    precision: str = "fp32",
    inference: InferenceOptions | None = None,
    options: Mapping[str, Any] | None = None,
) -> Model:
    """A training-free learner by name (``baseline``, ``probe``), or a trained one from a
    ``fewseg train`` run directory. ``device``: cpu, cuda or cuda:N (None: cuda when
    available); ``weights``: a local backbone weights file for a learner by name;
    ``options``: a learner by name's options (e.g. ``{"enlarge": 1}`` for ``probe``), or
    a trained learner's prediction-only ones (e.g. ``{"centre_decay": 0.1}`` for ``imaml``);
    ``size``: the square size images are brought to (default: the training size, else
    400); ``precision``: fp32, or bf16/fp16 mixed precision (fp16 on CUDA only);
    ``inference``: edge-aware upsampling, test-time refinement, ``min_presence`` (default
    :class:`InferenceOptions` ()'s)."""
    chosen = dict(options or {})
    if weights is not None:
        chosen["weights_path"] = str(weights)
    loaded = load_learner(learner, device, chosen or None, precision=precision)
    return Model(loaded, size, inference)


class Model:
    """A loaded learner, ready to adapt to support sets."""

    def __init__(
        self,
        loaded: LoadedLearner,
        size: int | None = None,
        inference: InferenceOptions | None = None,
    ) -> None:
        if size is not None and size < 8:
            raise FewSegError(f"size must be >= 8, got {size}")
        self.inference = inference if inference is not None else InferenceOptions()
        self.loaded = loaded
        self.learner: Learner = loaded.learner
        self.size = loaded.image_size(size)
        self.device = loaded.device
        self.precision = loaded.precision

    def __repr__(self) -> str:
        return f"Model({self.learner.name!r}, size={self.size}, device={self.device!r})"

    def adapt(self, images: Sequence[ImageLike], masks: Sequence[MaskLike]) -> ClassSegmenter:
        """Adapt to support images and their masks (as many masks as images)."""
        if isinstance(images, str | Path) or isinstance(masks, str | Path):
            raise FewSegError("adapt takes a list of images and a list of masks")
        if len(images) != len(masks):
            raise FewSegError(f"{len(images)} support images but {len(masks)} masks")
        if not images:
            raise FewSegError("adapt needs at least one support image and its mask")
        samples = [
            support_sample(image, mask, i)
            for i, (image, mask) in enumerate(zip(images, masks, strict=True))
        ]
        return self.adapt_samples(samples, [describe(m, i, "mask") for i, m in enumerate(masks)])

    def adapt_samples(
        self, samples: Sequence[ClassSample], names: Sequence[str] | None = None
    ) -> ClassSegmenter:
        """Adapt to checked support samples (``names`` say which mask is which in errors)."""
        return self.adapt_support(support_tensors(samples, self.size, names, self.inference.resize))

    def adapt_support(self, support: LabelledImages) -> ClassSegmenter:
        """Adapt to a support set already at the model's size (:func:`support_tensors`)."""
        self.learner.eval()
        with autocast(self.precision, self.device):
            return ClassSegmenter(
                self, refined_adapt(self.learner, support.to(self.device), self.inference)
            )


@dataclass(frozen=True)
class ClassSegmenter:
    """Segments the class of a support set in query images."""

    model: Model
    predictor: RefinedPredictor

    def __call__(self, queries: Sequence[ImageLike]) -> list[np.ndarray]:
        """HxW bool masks, each at its query's own size (positive log-odds: foreground)."""
        return [log_odds > 0 for log_odds in self.log_odds(queries)]

    def probabilities(self, queries: Sequence[ImageLike]) -> list[np.ndarray]:
        """HxW float32 foreground probabilities in [0, 1], each at its query's own size."""
        return [torch.sigmoid(torch.from_numpy(x)).numpy() for x in self.log_odds(queries)]

    def presence(self, queries: Sequence[ImageLike]) -> list[float]:
        """Per query, how likely the support's class is in it at all, in [0, 1]
        (fewseg.refinement.presence): low when it is absent."""
        if isinstance(queries, str | Path | Image.Image | np.ndarray):
            raise FewSegError("pass a list of query images")
        scores: list[float] = []
        for start in range(0, len(queries), BATCH_SIZE):
            images = [
                read_image(query, start + i)
                for i, query in enumerate(queries[start : start + BATCH_SIZE])
            ]
            scores += self.predict_with_presence(images)[1]
        return scores

    def log_odds(self, queries: Sequence[ImageLike]) -> list[np.ndarray]:
        """HxW float32 foreground log-odds, bilinearly resized to each query's own size."""
        return [x for batch in self.batches(queries) for x in batch]

    def batches(self, queries: Sequence[ImageLike], batch_size: int = BATCH_SIZE) -> Any:
        """:meth:`log_odds` in lists of up to ``batch_size`` (a caller writing files as it
        goes keeps only one batch)."""
        if isinstance(queries, str | Path | Image.Image | np.ndarray):
            raise FewSegError("pass a list of query images")
        for start in range(0, len(queries), batch_size):
            images = [
                read_image(query, start + i)
                for i, query in enumerate(queries[start : start + batch_size])
            ]
            yield self.predict_arrays(images)

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-odds of checked HxWx3 uint8 images, each at its own size."""
        return self.predict_with_presence(images, presence=False)[0]

    def predict_with_presence(
        self, images: Sequence[np.ndarray], presence: bool = True
    ) -> tuple[list[np.ndarray], list[float]]:
        """Log-odds of checked HxWx3 uint8 images, each at its own size, and (with
        ``presence``) each one's presence score; below the options' ``min_presence`` a
        query's mask is empty."""
        resize = self.predictor.options.resize
        batch = torch.stack([query_tensor(image, self.model.size, resize) for image in images])
        batch = batch.to(self.model.device)
        with torch.no_grad(), autocast(self.model.precision, self.model.device):
            log_odds, scores = self.predictor.refined_with_presence(batch, presence)
        guides = rgb(batch)
        with torch.no_grad():
            out = [
                full_size_log_odds(logit, guide, image, self.predictor.options)
                for logit, guide, image in zip(log_odds.float(), guides, images, strict=True)
            ]
        return out, [] if scores is None else scores.float().cpu().tolist()


# ---- inputs -------------------------------------------------------------------------------


def describe(value: Any, index: int, what: str) -> str:
    """How an error names an input: its path, or its position."""
    return str(value) if isinstance(value, str | Path) else f"{what} {index}"


def read_image(image: ImageLike, index: int = 0) -> np.ndarray:
    """An HxWx3 uint8 RGB array."""
    if isinstance(image, str | Path):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise FewSegError(f"image {index}: expected a uint8 array, got {image.dtype}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
        raise FewSegError(f"image {index}: expected an HxWx3 array, got shape {image.shape}")
    raise FewSegError(
        f"image {index}: expected a path, a PIL image or an array, got {type(image).__name__}"
    )


def read_mask(mask: MaskLike, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, ignore) HxW bool arrays of a mask in an accepted encoding."""
    name = describe(mask, index, "mask")
    if isinstance(mask, str | Path):
        return decode_mask(read_label_map(mask), name)[:2]
    if isinstance(mask, Image.Image):
        array = np.asarray(mask if mask.mode in ("P", "L", "1") else mask.convert("L"))
    elif isinstance(mask, np.ndarray):
        array = mask
    else:
        raise FewSegError(
            f"{name}: expected a path, a PIL image or an array, got {type(mask).__name__}"
        )
    if array.ndim != 2:
        raise FewSegError(f"{name}: expected an HxW mask, got shape {array.shape}")
    if array.dtype == bool:
        return array, np.zeros(array.shape, bool)
    if not np.issubdtype(array.dtype, np.integer):
        raise FewSegError(f"{name}: expected a bool or integer mask, got {array.dtype}")
    return decode_mask(array, name)[:2]


def support_sample(image: ImageLike, mask: MaskLike, index: int = 0) -> ClassSample:
    """A checked support example: the mask fits the image and has foreground."""
    rgb = read_image(image, index)
    foreground, ignore = read_mask(mask, index)
    name = describe(mask, index, "mask")
    check_same_size(rgb, foreground, name)
    if not foreground.any():
        raise FewSegError(f"{name}: support mask has no foreground pixel")
    return ClassSample(rgb, foreground, ignore)


def support_tensors(
    samples: Sequence[ClassSample],
    size: int,
    names: Sequence[str] | None = None,
    resize: str = "squash",
) -> LabelledImages:
    """The support set at size x size (squashed or padded: ``resize``); each mask must keep
    some foreground."""
    transform = resize_transform(size, resize)
    tensors = [sample_to_tensors(sample, transform) for sample in samples]
    for i, (_, mask, _) in enumerate(tensors):
        if not mask.any():
            name = names[i] if names else f"mask {i}"
            raise FewSegError(
                f"{name}: the mask's foreground vanishes at {size}x{size}; use a larger size "
                "(--size)"
            )
    return LabelledImages.of(tensors)


def query_tensor(image: np.ndarray, size: int, resize: str = "squash") -> torch.Tensor:
    """The query preprocessed exactly as an evaluation query is: [3, size, size]."""
    empty = np.zeros(image.shape[:2], bool)
    transform = resize_transform(size, resize)
    tensor, _, _ = sample_to_tensors(ClassSample(image, empty, empty), transform)
    return tensor


def full_size_log_odds(
    log_odds: torch.Tensor, guide: torch.Tensor, image: np.ndarray, options: InferenceOptions
) -> np.ndarray:
    """One query's foreground log-odds [1,h,w] at the model's size → (H, W) at the image's
    own, by the options' edge-aware upsampling with the full-size image as guide (the fast
    guided filter), or bilinearly, and its weak regions dropped; a padded query's padding
    cut off first."""
    full = torch.as_tensor(np.array(image), device=guide.device).permute(2, 0, 1)[None] / 255
    if options.resize == "pad":
        log_odds, guide = unpadded(log_odds, *image.shape[:2]), unpadded(guide, *image.shape[:2])
    return finished(log_odds[None], guide[None], options, full)[0, 0].cpu().numpy()


def resized_log_odds(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """One image's logits ([1,h,w] foreground or [2,h,w] (background, foreground), as a
    predictor returns them) → the foreground's log-odds, resized bilinearly to (H, W)."""
    log_odds = foreground_logit(logits[None].float())[None]
    return F.interpolate(log_odds, (height, width), mode="bilinear")[0, 0].numpy()
