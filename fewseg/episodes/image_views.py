"""Views of image batches (mirrored, zoomed) named apart from the images they show, so
that an evaluation's feature store encodes each view of an image once
(:mod:`fewseg.episodes.image_keys`)."""

from __future__ import annotations

import torch

from fewseg.episodes.image_keys import image_keys, name_images
from fewseg.models.upsample import bilinear_resize


def mirror_images(images: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] mirrored left to right, named apart (:func:`named_view`)."""
    return named_view(images.flip(-1), images, ("mirrored",))


def zoomed_images(images: torch.Tensor, zoom: float) -> torch.Tensor:
    """Images [B,3,H,W] enlarged ``zoom`` times (bilinear), named apart."""
    size = (round(images.shape[-2] * zoom), round(images.shape[-1] * zoom))
    return named_view(bilinear_resize(images, size), images, ("zoomed", zoom))


def named_view(view: torch.Tensor, images: torch.Tensor, tag: tuple) -> torch.Tensor:
    """``view`` of named ``images`` named ``(*tag, key)`` row by row, so that an
    evaluation's feature store encodes each view of an image once; unnamed stays unnamed."""
    keys = image_keys(images)
    if keys is not None:
        name_images(view, [(*tag, key) for key in keys])
    return view
