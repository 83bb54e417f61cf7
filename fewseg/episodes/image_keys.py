"""Names of image batches: which dataset image, at which size, each row of a batch is.

The episode loaders name the image batches they build (:func:`name_images`); the engine
reads the names (:func:`image_keys`) to find an image's features computed before. A name
describes the tensor object it is set on: a new tensor made from a named one (a slice, a
copy, a result of ``torch.cat``) has none unless made by :func:`cat_images`, and a named
tensor changed in place loses its name.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

ImageKey = Hashable
_NAMES = "_fewseg_image_keys"


def name_images(images: torch.Tensor, keys: Sequence[ImageKey]) -> torch.Tensor:
    """Name the rows of ``images`` [B,3,H,W]; returns ``images``."""
    if len(keys) != len(images):
        raise ValueError(f"{len(keys)} names for a batch of {len(images)} images")
    setattr(images, _NAMES, (tuple(keys), images._version))
    return images


def image_keys(images: torch.Tensor) -> tuple[ImageKey, ...] | None:
    """The names :func:`name_images` gave this very tensor, or None (none given, or the
    tensor was changed in place since)."""
    named = getattr(images, _NAMES, None)
    if named is None or named[1] != images._version:
        return None
    return named[0]


def cat_images(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(batches)``, named when every batch is."""
    joined = batches[0] if len(batches) == 1 else torch.cat(list(batches))
    if joined is batches[0]:
        return joined
    names = [image_keys(batch) for batch in batches]
    if all(n is not None for n in names):
        name_images(joined, [key for n in names for key in n])  # type: ignore[union-attr]
    return joined


def moved(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``images.to(device)``, with the names of ``images``."""
    result = images.to(device)
    keys = image_keys(images)
    if result is not images and keys is not None:
        name_images(result, keys)
    return result
