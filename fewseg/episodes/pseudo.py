"""Self-supervised episodes: superpixels as pseudo-classes (SSL-ALPNet, Ouyang et al. 2020).

A pseudo-episode takes one unlabelled image, squashed to the training size, splits it into
superpixels (Felzenszwalb-Huttenlocher graph segmentation, or SLIC), and picks one of a
reasonable size as the "class": the support and the query are independent augmentations
(random scale-crop, flip, colour jitter) of the image with that region as their mask. A
model then learns to find in one view what is marked in another, which is what few-shot
segmentation asks of it, from images nobody labelled.

Everything random is drawn from the task's generator, so a pseudo-episode is a pure
function of (seed, step, task), like a labelled one. An image's superpixels are computed
once per process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fewseg.data.source import ClassSample, SegmentationSource
from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.episodes.transforms import augment_transform, sample_to_tensors
from fewseg.errors import FewSegError

METHODS = ("felzenszwalb", "slic")
PSEUDO_CLASS = -1  # the class index of a pseudo-episode
ATTEMPTS = 50  # superpixels tried before giving up on an image


@dataclass(frozen=True)
class SuperpixelSettings:
    """How an image is split: ``felzenszwalb`` (scale 300, smoothing 0.8, no region under
    1500 pixels of a 400×400 image, scaled with the area) or ``slic`` (about 24 compact
    regions). A pseudo-class covers ``min_area``..``max_area`` of the image."""

    method: str = "felzenszwalb"
    min_area: float = 0.01
    max_area: float = 0.6

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FewSegError(
                f"superpixel method must be one of {', '.join(METHODS)}, got {self.method!r}"
            )
        if not 0 <= self.min_area < self.max_area <= 1:
            raise FewSegError(
                f"pseudo-class area range must be 0 <= min < max <= 1, "
                f"got {self.min_area}..{self.max_area}"
            )


def superpixels(image: np.ndarray, method: str = "felzenszwalb") -> np.ndarray:
    """(H, W) int32 region labels 0..n-1 of an (H, W, 3) uint8 image."""
    from skimage.segmentation import felzenszwalb, slic

    if method == "felzenszwalb":
        min_size = max(16, round(1500 * image.shape[0] * image.shape[1] / 400**2))
        labels = felzenszwalb(image, scale=300, sigma=0.8, min_size=min_size)
    else:
        labels = slic(image, n_segments=24, compactness=10, start_label=0)
    return labels.astype(np.int32)


class SquashedImages:
    """(image squashed to size × size, its superpixels) per (source, image, size, method),
    computed once per process; least recently used out beyond ``capacity`` images."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, source: SegmentationSource, image_id: str, size: int, method: str
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (source.key, image_id, size, method)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        image = Image.fromarray(source.load_image(image_id)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(image)
        entry = (pixels, superpixels(pixels, method).astype(np.int16))
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry


SQUASHED = SquashedImages()


def pick_region(
    labels: np.ndarray, settings: SuperpixelSettings, rng: np.random.Generator
) -> np.ndarray | None:
    """A superpixel of an allowed area, uniformly among them, as a bool mask; None if none."""
    areas = np.bincount(labels.ravel()) / labels.size
    allowed = np.flatnonzero((areas >= settings.min_area) & (areas <= settings.max_area))
    if len(allowed) == 0:
        return None
    return labels == allowed[rng.integers(len(allowed))]


def draw_pseudo_episode(
    source: SegmentationSource,
    image_ids: Sequence[str],
    shots: int,
    size: int,
    rng: np.random.Generator,
    settings: SuperpixelSettings = SuperpixelSettings(),
) -> EpisodeTensors:
    """One pseudo-episode: an image, a superpixel, ``shots`` + 1 independent augmentations
    (the first ``shots`` the support, the last the query). A view in which the region
    vanishes (cropped away) is drawn again."""
    if not image_ids:
        raise FewSegError("no images to draw self-supervised episodes from")
    for _ in range(ATTEMPTS):
        image_id = image_ids[int(rng.integers(len(image_ids)))]
        pixels, labels = SQUASHED.get(source, image_id, size, settings.method)
        region = pick_region(labels, settings, rng)
        if region is None:
            continue
        views = augmented_views(pixels, region, shots + 1, size, rng)
        if views is not None:
            support = LabelledImages.of(views[:shots])
            query = LabelledImages.of(views[shots:])
            return EpisodeTensors(PSEUDO_CLASS, support, query)
    raise FewSegError(
        f"no superpixel of {settings.min_area:.0%}..{settings.max_area:.0%} of an image "
        f"survives augmentation in {ATTEMPTS} tries (are the images nearly uniform?)"
    )


def augmented_views(
    pixels: np.ndarray, region: np.ndarray, count: int, size: int, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """``count`` independent augmentations of (image, region), each with its own torch
    seed from ``rng``; None when the region vanishes from one of them."""
    sample = ClassSample(pixels, region, np.zeros_like(region))
    views = []
    for _ in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            view = sample_to_tensors(sample, augment_transform(size))
        if not view[1].any():
            return None
        views.append(view)
    return views
