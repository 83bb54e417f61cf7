"""Reuse of decoded, resized samples across episodes.

Without augmentation a sample's tensors depend only on (image, class, size), and over an
evaluation (or an un-augmented training run) each image appears in many episodes. Decoding
and resizing it once per process saves most of an episode's loading time. Images are kept
per image (shared by every class of that image) and masks per (image, class); both
stores drop their least recently used entries beyond a byte budget.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import torch

from fewseg.data.source import SegmentationSource
from fewseg.episodes.transforms import masks_to_tensors, resize_transform, sample_to_tensors

DEFAULT_BUDGET_BYTES = 3 << 30


Value = TypeVar("Value", torch.Tensor, tuple[torch.Tensor, ...])


def _nbytes(value: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    return value.nbytes if isinstance(value, torch.Tensor) else sum(t.nbytes for t in value)


class ByteBudgetLRU(Generic[Value]):
    """A mapping to tensors (or tuples of them) that evicts the least recently used
    entries beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Value] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> Value | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Value) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        self._entries[key] = value
        self._bytes += _nbytes(value)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _nbytes(evicted)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


class ResizedSamples:
    """``load(image_id, class_index, size)`` → (image, foreground, ignore), as
    :func:`sample_to_tensors` with :func:`resize_transform` gives them, memoised."""

    def __init__(self, source: SegmentationSource, max_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.source = source
        self._images: ByteBudgetLRU[torch.Tensor] = ByteBudgetLRU(max_bytes * 2 // 3)
        # (foreground float, ignore bool): returned as they are, no conversion per episode
        self._masks: ByteBudgetLRU[tuple[torch.Tensor, ...]] = ByteBudgetLRU(max_bytes // 3)
        self.hits = 0
        self.misses = 0

    def load(
        self, image_id: str, class_index: int, size: int, mode: str = "squash"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same tensor objects on every hit: callers must not modify them in place.
        ``mode``: :data:`fewseg.episodes.transforms.RESIZE_MODES`."""
        shape = (size,) if mode == "squash" else (size, mode)
        image = self._images.get((image_id, *shape))
        masks = self._masks.get((image_id, class_index, *shape))
        if image is None:
            self.misses += 1
            sample = self.source.load(image_id, class_index)
            image, *fresh_masks = sample_to_tensors(sample, resize_transform(size, mode))
            image = image.contiguous()
            self._images.put((image_id, *shape), image)
            masks = tuple(fresh_masks)  # equal to any kept for this class, replaced
            self._masks.put((image_id, class_index, *shape), masks)
        elif masks is None:  # the image of another class: its masks alone
            self.misses += 1
            masks = masks_to_tensors(
                *self.source.load_masks(image_id, class_index), resize_transform(size, mode)
            )
            self._masks.put((image_id, class_index, *shape), masks)
        else:
            self.hits += 1
        return image, *masks

    def original_masks(self, image_id: str, class_index: int) -> tuple[torch.Tensor, ...]:
        """(foreground [H,W] bool, ignore [H,W] bool) at the image's own size (``--score-at
        original``: what scoring reads; bool, a quarter of float's bytes), memoised with the
        resized masks."""
        key = (image_id, class_index, "original")
        masks = self._masks.get(key)
        if masks is None:
            self.misses += 1
            mask, ignore = self.source.load_masks(image_id, class_index)
            masks = (
                torch.from_numpy(mask.astype(bool)),
                torch.from_numpy(ignore.astype(bool)),
            )
            self._masks.put(key, masks)
        else:
            self.hits += 1
        return masks


_PER_SOURCE: weakref.WeakKeyDictionary[SegmentationSource, ResizedSamples] = (
    weakref.WeakKeyDictionary()
)


def resized_samples(source: SegmentationSource) -> ResizedSamples:
    """The process-wide memo of ``source``'s resized samples (created on first use)."""
    samples = _PER_SOURCE.get(source)
    if samples is None:
        samples = _PER_SOURCE[source] = ResizedSamples(source)
    return samples
