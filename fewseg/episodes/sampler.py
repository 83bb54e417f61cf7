"""Deterministic episode lists (HSNet protocol: classes sampled uniformly, then images)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fewseg.data.source import SegmentationSource
from fewseg.errors import FewSegError


@dataclass(frozen=True)
class Episode:
    """A 1-way K-shot task: one query and K distinct support images of one class."""

    class_index: int
    query: str
    support: tuple[str, ...]


@dataclass(frozen=True)
class EpisodePlan:
    """The fixed episode list of one evaluation, and which classes it could use."""

    episodes: tuple[Episode, ...]
    classes_used: tuple[int, ...]
    classes_left_out: dict[int, int]  # class index → number of usable images
    seed: int = 0


def usable_classes(
    source: SegmentationSource, classes: Sequence[int], shots: int, min_images: int = 0
) -> tuple[tuple[int, ...], dict[int, int]]:
    """Split ``classes`` into those with ≥ max(shots+1, min_images) images and those left
    out (with their image counts). ``min_images`` keeps one class set across shot counts."""
    if shots < 1:
        raise FewSegError(f"shots must be >= 1, got {shots}")
    used: list[int] = []
    left_out: dict[int, int] = {}
    for c in classes:
        n = len(source.images_of(c))
        if n >= max(shots + 1, min_images):
            used.append(c)
        else:
            left_out[c] = n
    return tuple(used), left_out


def draw_episode(
    source: SegmentationSource, classes: Sequence[int], shots: int, rng: np.random.Generator
) -> Episode:
    """One episode: a class uniformly from ``classes``, then K+1 distinct images of it."""
    class_index = int(classes[rng.integers(len(classes))])
    images = source.images_of(class_index)
    picked = rng.choice(len(images), size=shots + 1, replace=False)
    return Episode(class_index, images[picked[0]], tuple(images[i] for i in picked[1:]))


def episode_plan(
    source: SegmentationSource,
    test_classes: Sequence[int],
    shots: int,
    episodes: int,
    seed: int,
    min_images: int = 0,
) -> EpisodePlan:
    """The episode list for (source, fold's test classes, shots, episodes, seed).

    It is computed before any model runs and depends on nothing else, so every method and
    every process count sees the same list.
    """
    if episodes < 1:
        raise FewSegError(f"episodes must be >= 1, got {episodes}")
    used, left_out = usable_classes(source, test_classes, shots, min_images)
    if not used:
        names = ", ".join(f"{source.class_name(c)} ({n})" for c, n in left_out.items())
        raise FewSegError(
            f"no class has the {max(shots + 1, min_images)} images a {shots}-shot episode needs "
            f"(images per class: {names or 'no classes'})"
        )
    rng = np.random.default_rng(seed)
    plan = tuple(draw_episode(source, used, shots, rng) for _ in range(episodes))
    return EpisodePlan(plan, used, left_out, seed)
