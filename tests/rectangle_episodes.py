"""Hand-made episodes: one rectangle of foreground per image, brighter than the noise."""

import torch

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages


def rectangle_episode(
    seed: int, shots: int, size: int, box: tuple[int, int], ignored: tuple
) -> EpisodeTensors:
    """``shots`` support images and a query of ``size`` x ``size``, each with a ``box``
    (height, width) rectangle at a seeded position; ``ignored`` indexes the [H, W] pixels
    marked ignore in every image (e.g. ``numpy.s_[:, -2:]``)."""
    g = torch.Generator().manual_seed(seed)
    n = shots + 1
    height, width = box
    masks = torch.zeros(n, size, size)
    for i in range(n):
        top, left = torch.randint(0, size - height, (2,), generator=g).tolist()
        masks[i, top : top + height, left : left + width] = 1.0
    images = torch.randn(n, 3, size, size, generator=g) + 2.0 * masks[:, None]
    ignore = torch.zeros(n, size, size, dtype=torch.bool)
    ignore[(slice(None), *ignored)] = True
    support = LabelledImages(images[:shots], masks[:shots], ignore[:shots])
    query = LabelledImages(images[shots:], masks[shots:], ignore[shots:])
    return EpisodeTensors(0, support, query)
