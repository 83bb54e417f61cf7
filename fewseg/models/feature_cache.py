"""Reuse of a frozen backbone's features across episodes.

In an evaluation every image appears in many episodes; with a frozen backbone its
features never change, so they are computed once. Images are keyed by their content: the
key hashes an evenly spaced sample of about 4096 values (microseconds, where hashing the
whole 400x400 image takes milliseconds) and a hit is confirmed by comparing the whole
image with the stored copy, so a hit is exact by construction. The misses of one call go
through the backbone as one batch (on CPU, batched and one-by-one features are bitwise
equal; tests/test_feature_cache.py checks it).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from fewseg.models.backbones import Backbone

KEY_SAMPLES = 4096


def image_key(image: torch.Tensor) -> bytes:
    flat = image.detach().reshape(-1)
    step = max(1, flat.numel() // KEY_SAMPLES)
    data = flat[::step].contiguous().cpu().numpy().tobytes()
    shape = f"{tuple(image.shape)}|{image.dtype}|{image.device}".encode()
    return hashlib.blake2b(data, digest_size=20, person=b"fewseg-img").digest() + shape


@dataclass(frozen=True)
class _Entry:
    """An image's features and the image itself, to confirm a hit.

    An image that owns its storage (such as the memoised samples of
    ``fewseg.episodes.sample_cache``) is kept by reference, at no cost in memory; while it
    is referenced its memory cannot be reused, and any in-place change bumps its version,
    so the same pointer, layout and version mean the same content: no comparison needed.
    Other images (rows of a stacked batch) are copied.
    """

    image: torch.Tensor
    version: int
    features: torch.Tensor
    nbytes: int

    @classmethod
    def of(cls, image: torch.Tensor, features: torch.Tensor) -> _Entry:
        owns_storage = image.untyped_storage().nbytes() == image.nbytes
        kept = image if owns_storage and image.is_contiguous() else image.clone()
        copied = 0 if kept is image else kept.nbytes
        return cls(kept, kept._version, features, copied + features.nbytes)

    def holds(self, image: torch.Tensor) -> bool:
        if (
            image.data_ptr() == self.image.data_ptr()
            and image.device == self.image.device
            and image.shape == self.image.shape
            and image.stride() == self.image.stride()
            and image.dtype == self.image.dtype
            and image._version == self.version == self.image._version
        ):
            return True
        return torch.equal(self.image, image)


class FeatureCache:
    """Wraps a frozen backbone; memoises per-image features, least recently used out first.

    Not a module: the backbone stays registered (and checkpointed) only where it lives.
    """

    def __init__(self, backbone: Backbone, max_bytes: int = 1 << 30) -> None:
        self.backbone = backbone
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # lookups may come from an evaluation's scoring thread
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict[str, object]:  # copies and pickles get a lock of their own
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _find(self, key: bytes, image: torch.Tensor) -> torch.Tensor | None:
        cached = self._entries.get(key)
        if cached is None or not cached.holds(image):
            return None
        self._entries.move_to_end(key)
        return cached.features

    def _store(self, key: bytes, image: torch.Tensor, features: torch.Tensor) -> None:
        stale = self._entries.pop(key, None)  # same sampled values, another image: replaced
        if stale is not None:
            self._bytes -= stale.nbytes
        entry = _Entry.of(image, features)
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images`` [B,3,H,W]; the images not cached go through the backbone
        together, in one batch."""
        if not self.backbone.frozen:
            raise ValueError("FeatureCache needs a frozen backbone: features would go stale")
        with torch.no_grad():
            keys = [image_key(image) for image in images]
            with self._lock:
                found = [self._find(k, image) for k, image in zip(keys, images, strict=True)]
            missing = [i for i, f in enumerate(found) if f is None]
            self.hits += len(images) - len(missing)
            self.misses += len(missing)
            if missing:
                computed = self.backbone(images[missing])
                with self._lock:
                    for i, features in zip(missing, computed, strict=True):
                        self._store(keys[i], images[i], features)
                        found[i] = features
            return found[0][None] if len(found) == 1 else torch.stack(found)


def encode(encoder: Backbone, cache: FeatureCache, images: torch.Tensor) -> torch.Tensor:
    """Encoder features for a learner: a trainable encoder runs with gradients; a frozen
    one's features come through ``cache`` without gradients.

    In training with augmentation nearly every image is new, so the cache mostly misses;
    a miss costs a hash of sampled values and a copy of the image on top of the forward
    pass, and the least recently used entries make room. Without augmentation, an image's
    features are computed once for the whole run.
    """
    if not encoder.frozen:
        return encoder(images)
    return cache(images)
