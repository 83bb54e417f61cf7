"""Frozen encoders' features kept on disk for the processes of one run.

A benchmark trains and evaluates each (fold, learner) task in a process of its own, and
several tasks read the same images through the same frozen backbone (the probe and
``imaml`` on every fold; the training of one fold meets the test images of another). A
:class:`FeatureDisk` lets their feature stores (fewseg.engine.features) share what one of
them computed: one file per (encoder, image name), written atomically, read back bit for
bit. The encoder is identified by its class, its settings and its weights, so two
processes' copies of the same frozen backbone share files and different ones never do.
The disk belongs to one run: whoever opens it removes it afterwards (the features depend
on fewseg's code as well, which a later run may not share).
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import weakref
from pathlib import Path

import torch

from fewseg.episodes.image_keys import ImageKey
from fewseg.fileio import atomic_write
from fewseg.models.encoder import Encoder, Features

# attributes of an encoder that change its features without changing its weights
_NOT_SETTINGS = {"training", "weights_version", "_feature_store"}


def encoder_identity(encoder: Encoder) -> str:
    """A digest of ``encoder``'s class, settings (``enlarge``, ``output``, taps, ...) and
    weights: equal for two processes' copies of one frozen backbone."""
    digest = hashlib.sha256()
    output = encoder.output
    settings = {
        f"{prefix}.{name}": value
        for prefix, module in encoder.named_modules()
        for name, value in vars(module).items()
        if name not in _NOT_SETTINGS and isinstance(value, bool | int | float | str | tuple)
    }
    described = (
        type(encoder).__module__,
        type(encoder).__qualname__,
        encoder.enlarge,
        None if output is None else f"{output.__module__}.{output.__qualname__}",
        sorted(settings.items()),
    )
    digest.update(repr(described).encode())
    for name, tensor in encoder.state_dict().items():
        shape = tensor.shape
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {tensor.dtype} {tuple(shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _detached(row: Features) -> Features:
    """A stored row with storage of its own (a row of a batch is a view of all of it)."""
    if isinstance(row, torch.Tensor):
        return row.clone()
    return tuple(part.clone() for part in row)


class FeatureDisk:
    """Features by (encoder identity, image name) in files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._failed = False
        self._identities: weakref.WeakKeyDictionary[Encoder, tuple[int, str]] = (
            weakref.WeakKeyDictionary()
        )

    def identity(self, encoder: Encoder) -> str:
        kept = self._identities.get(encoder)
        if kept is None or kept[0] != encoder.weights_version:
            kept = self._identities[encoder] = (encoder.weights_version, encoder_identity(encoder))
        return kept[1]

    def _path(self, encoder: Encoder, key: ImageKey) -> Path:
        name = hashlib.sha256(repr((self.identity(encoder), key)).encode()).hexdigest()
        return self.root / name[:2] / f"{name}.pt"

    def load(self, encoder: Encoder, key: ImageKey) -> Features | None:
        """The features written for this encoder and image, or None (none written, or
        unreadable: computed again)."""
        try:
            loaded = torch.load(self._path(encoder, key), weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            return None
        return loaded if isinstance(loaded, torch.Tensor) else tuple(loaded)

    def save(self, encoder: Encoder, key: ImageKey, row: Features) -> None:
        """Write the features (a disk that cannot take them, full say, stops sharing with
        a warning: the features are in memory all the same)."""
        if self._failed:
            return
        stored = _detached(row)
        try:
            atomic_write(self._path(encoder, key), lambda handle: torch.save(stored, handle))
        except OSError as error:
            self._failed = True
            warnings.warn(f"features no longer shared through {self.root}: {error}", stacklevel=2)
