"""The tensors of one episode, loaded from a source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fewseg.data.source import SegmentationSource
from fewseg.episodes.image_keys import ImageKey, cat_images, image_keys, moved, name_images
from fewseg.episodes.sample_cache import resized_samples
from fewseg.episodes.sampler import Episode
from fewseg.episodes.transforms import sample_to_tensors

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image, foreground, ignore


@dataclass(frozen=True)
class LabelledImages:
    """Images [B,3,H,W] (normalised), their masks [B,H,W] in {0,1} and ignore maps [B,H,W]
    (bool): an episode's support set, or its query with its ground truth."""

    images: torch.Tensor
    masks: torch.Tensor
    ignore: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shots(self) -> int:
        return len(self.images)

    @classmethod
    def of(
        cls, samples: Sequence[Sample], keys: Sequence[ImageKey] | None = None
    ) -> LabelledImages:
        """From each image's (image [3,H,W], mask [H,W], ignore [H,W]); with ``keys`` the
        image batch is named (:mod:`fewseg.episodes.image_keys`). One sample's tensors
        become views, not copies."""
        if not samples:
            raise ValueError("no labelled images")
        images, masks, ignore = (_batch(parts) for parts in zip(*samples, strict=True))
        if keys is not None:
            name_images(images, keys)
        return cls(images, masks, ignore)

    @classmethod
    def cat(cls, parts: Sequence[LabelledImages]) -> LabelledImages:
        return cls(
            cat_images([p.images for p in parts]),
            torch.cat([p.masks for p in parts]),
            torch.cat([p.ignore for p in parts]),
        )

    def select(self, indices: Sequence[int]) -> LabelledImages:
        """The images at ``indices`` (their names kept)."""
        images = self.images[list(indices)]
        keys = image_keys(self.images)
        if keys is not None:
            name_images(images, [keys[i] for i in indices])
        return LabelledImages(images, self.masks[list(indices)], self.ignore[list(indices)])

    def to(self, device: torch.device | str) -> LabelledImages:
        """On ``device`` (itself when already there), the images keeping their names."""
        device = torch.device(device)
        if all(t.device == device for t in (self.images, self.masks, self.ignore)):
            return self
        return LabelledImages(
            moved(self.images, device), self.masks.to(device), self.ignore.to(device)
        )


@dataclass(frozen=True)
class EpisodeTensors:
    """A support set and one query with its ground truth. ``truth``: the query's (mask
    [H,W], ignore [H,W]) at its own size, where it is scored there (``--score-at
    original``); it stays on the CPU, where scores are counted."""

    class_index: int
    support: LabelledImages
    query: LabelledImages
    truth: tuple[torch.Tensor, torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> EpisodeTensors:
        return EpisodeTensors(
            self.class_index, self.support.to(device), self.query.to(device), self.truth
        )

    def scored_truth(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mask, ignore) the query's prediction is scored against: ``truth``, else
        the query's own at the images' size."""
        return self.truth or (self.query.masks[0], self.query.ignore[0])

    def labelled_images(self) -> LabelledImages:
        """All labelled images of the episode, support shots first and the query last."""
        return LabelledImages.cat([self.support, self.query])


def _batch(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack; a single tensor becomes a view (1-shot support sets are not copied)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(list(tensors))


def _episode_tensors(
    episode: Episode,
    load: Callable[[str], Sample],
    key: Callable[[str], ImageKey] | None = None,
) -> EpisodeTensors:
    def labelled(ids: Sequence[str]) -> LabelledImages:
        keys = [key(i) for i in ids] if key is not None else None
        return LabelledImages.of([load(i) for i in ids], keys)

    return EpisodeTensors(episode.class_index, labelled(episode.support), labelled([episode.query]))


def load_episode(
    source: SegmentationSource, episode: Episode, transform: v2.Transform
) -> EpisodeTensors:
    """The episode through ``transform`` (say, a random augmentation): its images unnamed."""
    c = episode.class_index
    return _episode_tensors(episode, lambda i: sample_to_tensors(source.load(i, c), transform))


def resized_image_key(
    source: SegmentationSource, image_id: str, size: int, mode: str = "squash"
) -> ImageKey:
    """The name of image ``image_id`` of ``source`` brought to size x size by ``mode``."""
    return (source.key, image_id, size) if mode == "squash" else (source.key, image_id, size, mode)


def load_resized_episode(
    source: SegmentationSource,
    episode: Episode,
    size: int,
    original_truth: bool = False,
    resize: str = "squash",
) -> EpisodeTensors:
    """The episode at size x size, squashed or padded (``resize``: the evaluation's and an
    un-augmented training run's transform), its images named by
    :func:`resized_image_key`; each (image, class, size, resize) is decoded and resized
    once per process (see sample_cache). ``original_truth``: with the query's masks at its
    own size too (``EpisodeTensors.truth``)."""
    samples = resized_samples(source)
    tensors = _episode_tensors(
        episode,
        lambda i: samples.load(i, episode.class_index, size, resize),
        lambda i: resized_image_key(source, i, size, resize),
    )
    if not original_truth:
        return tensors
    mask, ignore = samples.original_masks(episode.query, episode.class_index)
    return replace(tensors, truth=(mask, ignore))


class EpisodeDataset(Dataset[EpisodeTensors]):
    """A fixed episode list as a map-style dataset (one item = one episode)."""

    def __init__(
        self,
        source: SegmentationSource,
        episodes: tuple[Episode, ...],
        size: int,
        original_truth: bool = False,
        resize: str = "squash",
    ) -> None:
        self.source = source
        self.episodes = episodes
        self.size = size
        self.original_truth = original_truth
        self.resize = resize

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> EpisodeTensors:
        return load_resized_episode(
            self.source, self.episodes[index], self.size, self.original_truth, self.resize
        )
