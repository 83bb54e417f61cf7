"""The engine's feature store: each named image encoded once.

In an evaluation every image appears in many episodes, and a learner's encoder (the part
that maps an image alone to features) does not change during it; in a training run a
frozen backbone never changes. A :class:`FeatureStore` attached to such an encoder answers
its calls for images the episode loaders named (fewseg.episodes.image_keys) from features
computed before, and computes what it lacks in one batch. Unnamed images (augmented ones)
go straight through the encoder. With :meth:`FeatureStore.encode_ahead`, encoder threads
compute the features of images before the learner asks for them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch

from fewseg.engine.feature_disk import FeatureDisk
from fewseg.episodes.image_keys import ImageKey, image_keys
from fewseg.episodes.sample_cache import ByteBudgetLRU
from fewseg.models.encoder import Encoder, Features

DEFAULT_BUDGET_BYTES = 1 << 30


def _rows(features: Features) -> list[Features]:
    """One image's features per row of a batch's."""
    if isinstance(features, torch.Tensor):
        return list(features)
    return [tuple(parts) for parts in zip(*features, strict=True)]


def _stacked(rows: Sequence[Features]) -> Features:
    """The batch of :func:`_rows` (a single row becomes a view), in the rows' memory layout
    (channels-last rows give a channels-last batch)."""

    def stack(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0][None]
        order = sorted(range(parts[0].dim()), key=lambda dim: -parts[0].stride(dim))
        stacked = torch.stack([part.permute(order) for part in parts])
        return stacked.permute(0, *(1 + order.index(dim) for dim in range(parts[0].dim())))

    if isinstance(rows[0], torch.Tensor):
        return stack(rows)  # type: ignore[arg-type]
    return tuple(stack(parts) for parts in zip(*rows, strict=True))


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives features computed on ``device`` on this thread now (None:
    autocast off): features are stored under it, so that a bf16 evaluation and an fp32 one
    of the same encoder never share them (fewseg.engine.precision)."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def _stored_keys(
    keys: Sequence[ImageKey] | None, images: torch.Tensor, ahead: bool = False
) -> list[ImageKey] | None:
    """The image names with the precision they are computed at (``ahead``: on an encoder
    thread, where this thread's autocast does not reach: full precision)."""
    if keys is None:
        return None
    dtype = None if ahead else _autocast_dtype(images.device)
    return [(key, dtype) for key in keys] if dtype is not None else list(keys)


class FeatureStore:
    """Features by image name for the encoders it is attached to (one store per encoder,
    or one per encoder function), least recently used out first beyond ``max_bytes``.
    Thread-safe: a name being computed on one thread is waited for on another. With a
    ``disk`` (fewseg.engine.feature_disk) what it lacks is looked for there before it is
    computed, and what it computes is written there for other processes."""

    def __init__(
        self, max_bytes: int = DEFAULT_BUDGET_BYTES, disk: FeatureDisk | None = None
    ) -> None:
        self._entries: ByteBudgetLRU[Features] = ByteBudgetLRU(max_bytes)
        self._disk = disk
        self._pending: dict[ImageKey, Future[Features]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def features(self, encoder: Encoder, images: torch.Tensor) -> Features:
        """``encoder``'s features of ``images``: those of named images found or computed
        once, without gradients; unnamed images computed by the encoder as they are."""
        keys = _stored_keys(image_keys(images), images)
        if keys is None:
            return encoder.compute(images)
        found: list[Features | Future[Features] | None] = []
        mine: dict[int, Future[Features]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                entry = self._entries.get(key)
                if entry is not None:
                    found.append(entry)
                elif key in self._pending:
                    found.append(self._pending[key])
                else:
                    mine[i] = self._pending[key] = Future()
                    found.append(None)
            self.hits += len(keys) - len(mine)
            self.misses += len(mine)
        computed = self._compute(encoder, images, keys, mine) if mine else None
        if computed is not None and len(mine) == len(keys):
            return computed
        rows = []
        for i, entry in enumerate(found):
            if isinstance(entry, Future):
                entry = entry.result()
            elif entry is None:
                entry = mine[i].result()
            rows.append(entry)
        return _stacked(rows)

    def _compute(
        self,
        encoder: Encoder,
        images: torch.Tensor,
        keys: Sequence[ImageKey],
        mine: dict[int, Future[Features]],
    ) -> Features | None:
        """The features of the rows ``mine`` of ``images``: those on the disk read, the others
        computed in one batch; all stored. Returns the batch when every row was computed."""
        rows = [i for i in mine if not self._read(encoder, keys[i], mine[i])]
        if not rows:
            return None
        batch = images if len(rows) == len(images) else images[rows]
        try:
            with torch.no_grad():
                computed = encoder.compute(batch)
        except BaseException as error:
            with self._lock:
                for i in rows:
                    self._pending.pop(keys[i], None)
                    mine[i].set_exception(error)
            raise
        computed_rows = list(zip(rows, _rows(computed), strict=True))
        with self._lock:
            for i, row in computed_rows:
                self._entries.put(keys[i], row)
                self._pending.pop(keys[i], None)
        for i, row in computed_rows:
            mine[i].set_result(row)
        if self._disk is not None:
            for i, row in computed_rows:
                self._disk.save(encoder, keys[i], row)
        return computed if len(rows) == len(mine) else None

    def _read(self, encoder: Encoder, key: ImageKey, future: Future[Features]) -> bool:
        """Whether the disk had the features of ``key`` (then stored and answered)."""
        row = None if self._disk is None else self._disk.load(encoder, key)
        if row is None:
            return False
        with self._lock:
            self._entries.put(key, row)
            self._pending.pop(key, None)
            self.disk_hits += 1
        future.set_result(row)
        return True

    # ---- encoding ahead, on threads of its own --------------------------------------------

    def start_encoders(self, workers: int) -> None:
        """Encoder threads for :meth:`encode_ahead`, each running torch on one thread (one
        stream of images through a network on every core leaves other threads no core,
        and small late layers parallelise poorly)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                workers, "fewseg-encode", initializer=torch.set_num_threads, initargs=(1,)
            )

    def stop_encoders(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def encode_ahead(self, encoder: Encoder, images: torch.Tensor) -> None:
        """Have the encoder threads compute the features of the named ``images`` that are
        neither stored nor being computed, one image per task (then they do not depend
        on which images share a batch). Needs :meth:`start_encoders`."""
        if self._pool is None:
            raise RuntimeError("encode_ahead needs start_encoders first")
        keys = _stored_keys(image_keys(images), images, ahead=True)
        if keys is None:
            return
        for i, key in enumerate(keys):
            with self._lock:
                if key in self._entries or key in self._pending:
                    continue
                future: Future[Features] = Future()
                self._pending[key] = future
            image = images[i : i + 1]
            self._pool.submit(self._encode_one, encoder, image, key, future)

    def _encode_one(
        self, encoder: Encoder, image: torch.Tensor, key: ImageKey, future: Future[Features]
    ) -> None:
        try:
            if self._read(encoder, key, future):
                return
            with torch.no_grad():
                row = _rows(encoder.compute(image))[0]
        except BaseException as error:
            with self._lock:
                self._pending.pop(key, None)
            future.set_exception(error)
            return
        with self._lock:
            self._entries.put(key, row)
            self._pending.pop(key, None)
            self.misses += 1
        future.set_result(row)
        if self._disk is not None:
            self._disk.save(encoder, key, row)

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_encoders(cancel=error is not None)


@contextmanager
def attached(stores: dict[Encoder, FeatureStore]) -> Iterator[None]:
    """Each store attached to its encoder for the body, then what was attached before."""
    previous = {encoder: encoder.attach(store) for encoder, store in stores.items()}
    try:
        yield
    finally:
        for encoder, store in previous.items():
            encoder.attach(store)


def frozen_encoders(module: torch.nn.Module) -> list[Encoder]:
    """The encoders in ``module`` whose weights never change (frozen backbones): the outer
    ones only, as an encoder's output covers what it contains."""
    found: list[Encoder] = []
    for child in module.modules():
        inside = any(child in set(outer.modules()) for outer in found)
        if isinstance(child, Encoder) and child.frozen and not inside:
            found.append(child)
    return found


_FROZEN_STORES: weakref.WeakKeyDictionary[Encoder, tuple[int, FeatureStore]] = (
    weakref.WeakKeyDictionary()
)


_SHARED_DISK: list[FeatureDisk | None] = [None]


def share_frozen_features(disk: FeatureDisk | None) -> None:
    """Frozen encoders' stores made from now on read and write ``disk`` (None: none), which
    other processes of the run share (fewseg.engine.feature_disk)."""
    _SHARED_DISK[0] = disk


def frozen_store(encoder: Encoder) -> FeatureStore:
    """The store of a frozen encoder, kept while the encoder lives and its weights stay
    (a run's training, validations and evaluations share it)."""
    kept = _FROZEN_STORES.get(encoder)
    if kept is None or kept[0] != encoder.weights_version:
        store = FeatureStore(disk=_SHARED_DISK[0])
        kept = _FROZEN_STORES[encoder] = (encoder.weights_version, store)
    return kept[1]


def training_stores(learner: torch.nn.Module) -> dict[Encoder, FeatureStore]:
    """The store of each frozen encoder of a learner (:func:`frozen_store`)."""
    return {encoder: frozen_store(encoder) for encoder in frozen_encoders(learner)}


def evaluation_stores(learner: Any) -> dict[Encoder, FeatureStore]:
    """:func:`training_stores`, and a store of its own for the learner's encoder when that
    is not frozen: it does not change during one evaluation."""
    stores = training_stores(learner)
    encoder = learner.encoder
    if encoder is not None and encoder not in stores:
        stores[encoder] = FeatureStore()
    return stores
