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
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fewseg.models.backbones import Backbone

KEY_SAMPLES = 4096


def image_key(image: torch.Tensor) -> bytes:
    flat = image.detach().reshape(-1)
    step = max(1, flat.numel() // KEY_SAMPLES)
    data = flat[::step].contiguous().cpu().numpy().tobytes()
    shape = f"{tuple(image.shape)}|{image.dtype}|{image.device}".encode()
    return hashlib.blake2b(data, digest_size=20, person=b"fewseg-img").digest() + shape


@dataclass
class _Entry:
    """An image's features and the image itself, to confirm a hit.

    A contiguous image is kept by reference, at no cost in memory while its owner (an
    episode, a memoised sample of ``fewseg.episodes.sample_cache``) holds it anyway; while
    it is referenced its memory cannot be reused, and any in-place change bumps its version,
    so the same pointer, layout and version mean the same content: no comparison needed.
    A row of a batch is a view that keeps the whole batch alive, so a caller that stacks
    images only to encode them should pass them as a sequence instead. Other images
    (non-contiguous views) are copied.
    """

    image: torch.Tensor
    version: int
    features: torch.Tensor
    nbytes: int  # of what the entry holds besides the derived values
    # name → (version, value): see FeatureCache.derived
    derived: dict[str, tuple[Hashable, torch.Tensor]] = field(default_factory=dict)
    dropped: bool = False  # evicted or cleared: its bytes no longer count

    def total_bytes(self) -> int:
        return self.nbytes + sum(value.nbytes for _, value in self.derived.values())

    @classmethod
    def of(cls, image: torch.Tensor, features: torch.Tensor) -> _Entry:
        kept = image.contiguous()  # the image itself when it is contiguous
        copied = 0 if kept is image else kept.nbytes
        return cls(kept, kept._version, features, copied + features.nbytes)

    def is_kept(self, image: torch.Tensor) -> bool:
        """``image`` is the kept tensor (or a tensor of the same memory and layout) and
        neither was changed since."""
        return (
            image.data_ptr() == self.image.data_ptr()
            and image.device == self.image.device
            and image.shape == self.image.shape
            and image.stride() == self.image.stride()
            and image.dtype == self.image.dtype
            and image._version == self.version == self.image._version
        )

    def holds(self, image: torch.Tensor) -> bool:
        return self.is_kept(image) or torch.equal(self.image, image)


Identity = tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype, torch.device]


def identity(image: torch.Tensor) -> Identity:
    return image.data_ptr(), tuple(image.shape), image.stride(), image.dtype, image.device


class FeatureCache:
    """Wraps a frozen backbone; memoises per-image features, least recently used out first.

    Not a module: the backbone stays registered (and checkpointed) only where it lives.
    """

    def __init__(self, backbone: Backbone, max_bytes: int = 1 << 30) -> None:
        self.backbone = backbone
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        # an image met again as the same tensor is found without hashing it: the entry
        # keeps that memory referenced, so no other tensor can have its address meanwhile
        self._keys_by_identity: dict[Identity, bytes] = {}
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
            for entry in self._entries.values():
                entry.dropped = True
            self._entries.clear()
            self._keys_by_identity.clear()
            self._bytes = 0

    def _find(self, key: bytes, image: torch.Tensor) -> _Entry | None:
        cached = self._entries.get(key)
        if cached is None or not cached.holds(image):
            return None
        self._entries.move_to_end(key)
        return cached

    def _find_kept(self, image: torch.Tensor) -> _Entry | None:
        """The entry of ``image`` if it is a kept tensor, unchanged: no hashing."""
        key = self._keys_by_identity.get(identity(image))
        cached = self._entries.get(key) if key is not None else None
        if cached is None or not cached.is_kept(image):
            return None
        self._entries.move_to_end(key)
        return cached

    def _drop(self, key: bytes, entry: _Entry) -> None:
        entry.dropped = True
        self._bytes -= entry.total_bytes()
        if self._keys_by_identity.get(identity(entry.image)) == key:
            del self._keys_by_identity[identity(entry.image)]

    def _store(self, key: bytes, image: torch.Tensor, features: torch.Tensor) -> _Entry:
        stale = self._entries.pop(key, None)  # same sampled values, another image: replaced
        if stale is not None:
            self._drop(key, stale)
        entry = _Entry.of(image, features)
        self._entries[key] = entry
        self._keys_by_identity[identity(entry.image)] = key
        self._bytes += entry.nbytes
        self._evict()
        return entry

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._drop(*self._entries.popitem(last=False))

    def __call__(
        self, images: torch.Tensor | Sequence[torch.Tensor], **backbone_options: Any
    ) -> torch.Tensor:
        """Features [B,C,h,w] of ``images``, a batch [B,3,H,W] or a sequence of [3,H,W]
        images; those not cached go through the backbone together, in one batch (with
        ``backbone_options``). When all of them miss, the backbone's output is returned as
        it is, without a copy."""
        entries, computed = self._entries_of(images, backbone_options)
        if computed is not None:
            return computed
        return _batch([entry.features for entry in entries])

    def derived(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        name: str,
        version: Hashable,
        transform: Callable[[torch.Tensor], torch.Tensor],
        **backbone_options: Any,
    ) -> torch.Tensor:
        """``transform(features)`` of ``images``, computed once per image and kept with its
        features under ``name``, without gradients: say, a frozen neck after the backbone
        during an evaluation. A stored value of another ``version`` is replaced: pass what
        identifies the transform's state (its parameters' addresses and versions). Images
        whose value is missing are transformed together, in one batch."""
        return self.features_and_derived(images, name, version, transform, **backbone_options)[1]

    def features_and_derived(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        name: str,
        version: Hashable,
        transform: Callable[[torch.Tensor], torch.Tensor],
        **backbone_options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, :meth:`derived` values) of ``images``, found in one lookup."""
        entries, computed = self._entries_of(images, backbone_options)
        values: list[torch.Tensor | None] = [None] * len(entries)
        with self._lock:
            for i, entry in enumerate(entries):
                stored = entry.derived.get(name)
                if stored is not None and stored[0] == version:
                    values[i] = stored[1]
        missing = [i for i, value in enumerate(values) if value is None]
        if missing:
            with torch.no_grad():
                transformed = transform(_batch([entries[i].features for i in missing]))
            with self._lock:
                for i, value in zip(missing, transformed, strict=True):
                    entry = entries[i]
                    old = entry.derived.get(name)
                    entry.derived[name] = (version, value)
                    if not entry.dropped:
                        self._bytes += value.nbytes - (old[1].nbytes if old is not None else 0)
                    values[i] = value
                self._evict()
        features = computed if computed is not None else _batch([e.features for e in entries])
        return features, _batch([value for value in values if value is not None])

    def _entries_of(
        self, images: torch.Tensor | Sequence[torch.Tensor], backbone_options: dict[str, Any]
    ) -> tuple[list[_Entry], torch.Tensor | None]:
        """The entry of each image (computing the missing features in one batch) and, when
        every image missed, the backbone's output."""
        if not self.backbone.frozen:
            raise ValueError("FeatureCache needs a frozen backbone: features would go stale")
        with torch.no_grad():
            with self._lock:
                found = [self._find_kept(image) for image in images]
            keys = {i: image_key(images[i]) for i, f in enumerate(found) if f is None}
            with self._lock:
                for i, key in keys.items():
                    found[i] = self._find(key, images[i])
            missing = [i for i, f in enumerate(found) if f is None]
            self.hits += len(images) - len(missing)
            self.misses += len(missing)
            computed = None
            if missing:
                if isinstance(images, torch.Tensor):
                    batch = images[missing]
                else:
                    batch = torch.stack([images[i] for i in missing])
                computed = self.backbone(batch, **backbone_options)
                with self._lock:
                    for i, features in zip(missing, computed, strict=True):
                        found[i] = self._store(keys[i], images[i], features)
            entries = [entry for entry in found if entry is not None]
            return entries, computed if len(missing) == len(entries) else None


def _batch(rows: list[torch.Tensor]) -> torch.Tensor:
    return rows[0][None] if len(rows) == 1 else torch.stack(rows)


def encode(
    encoder: Backbone,
    cache: FeatureCache,
    images: torch.Tensor | Sequence[torch.Tensor],
    **frozen_options: Any,
) -> torch.Tensor:
    """Encoder features for a learner: a trainable encoder runs with gradients; a frozen
    one's features come through ``cache`` without gradients.

    In training with augmentation nearly every image is new, so the cache mostly misses;
    a miss costs a hash of sampled values on top of the forward pass, and the least
    recently used entries make room. Without augmentation, an image's features are
    computed once for the whole run. ``frozen_options`` go to a frozen backbone's forward
    pass.
    """
    if not encoder.frozen:
        return encoder(images if isinstance(images, torch.Tensor) else torch.stack(images))
    return cache(images, **frozen_options)
