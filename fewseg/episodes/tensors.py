"""The tensors of one episode, loaded from a source."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fewseg.data.source import SegmentationSource
from fewseg.episodes.sample_cache import resized_samples
from fewseg.episodes.sampler import Episode
from fewseg.episodes.transforms import sample_to_tensors


@dataclass
class SupportSet:
    """K labelled examples: images [K,3,H,W], masks [K,H,W] in {0,1}, ignore [K,H,W] bool."""

    images: torch.Tensor
    masks: torch.Tensor
    ignore: torch.Tensor

    @property
    def shots(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> SupportSet:
        return SupportSet(self.images.to(device), self.masks.to(device), self.ignore.to(device))


@dataclass
class EpisodeTensors:
    """A support set and one query image with its ground truth."""

    class_index: int
    support: SupportSet
    query_image: torch.Tensor
    query_mask: torch.Tensor
    query_ignore: torch.Tensor

    def to(self, device: torch.device | str) -> EpisodeTensors:
        return EpisodeTensors(
            self.class_index,
            self.support.to(device),
            self.query_image.to(device),
            self.query_mask.to(device),
            self.query_ignore.to(device),
        )

    def labelled_images(self) -> SupportSet:
        """All labelled images of the episode, support shots first and the query last."""
        return SupportSet(
            torch.cat([self.support.images, self.query_image[None]]),
            torch.cat([self.support.masks, self.query_mask[None]]),
            torch.cat([self.support.ignore, self.query_ignore[None]]),
        )


def load_episode(
    source: SegmentationSource, episode: Episode, transform: v2.Transform
) -> EpisodeTensors:
    c = episode.class_index
    images, masks, ignores = zip(
        *(sample_to_tensors(source.load(i, c), transform) for i in episode.support), strict=True
    )
    query_image, query_mask, query_ignore = sample_to_tensors(
        source.load(episode.query, c), transform
    )
    support = SupportSet(torch.stack(images), torch.stack(masks), torch.stack(ignores))
    return EpisodeTensors(c, support, query_image, query_mask, query_ignore)


def load_resized_episode(source: SegmentationSource, episode: Episode, size: int) -> EpisodeTensors:
    """The episode as :func:`load_episode` with :func:`resize_transform` gives it; each
    (image, class, size) is decoded and resized once per process (see sample_cache)."""
    samples = resized_samples(source)
    c = episode.class_index
    images, masks, ignores = zip(*(samples.load(i, c, size) for i in episode.support), strict=True)
    query_image, query_mask, query_ignore = samples.load(episode.query, c, size)
    support = SupportSet(_batch(images), _batch(masks), _batch(ignores))
    return EpisodeTensors(c, support, query_image, query_mask, query_ignore)


def _batch(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Stack; a single tensor becomes a view (1-shot support sets are not copied)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


class EpisodeDataset(Dataset[EpisodeTensors]):
    """A fixed episode list as a map-style dataset (one item = one episode)."""

    def __init__(
        self, source: SegmentationSource, episodes: tuple[Episode, ...], size: int
    ) -> None:
        self.source = source
        self.episodes = episodes
        self.size = size

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> EpisodeTensors:
        return load_resized_episode(self.source, self.episodes[index], self.size)
