"""The tensors of one episode, loaded from a source."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fewseg.data.source import SegmentationSource
from fewseg.episodes.sampler import Episode
from fewseg.episodes.transforms import resize_transform, sample_to_tensors


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


class EpisodeDataset(Dataset[EpisodeTensors]):
    """A fixed episode list as a map-style dataset (one item = one episode)."""

    def __init__(
        self, source: SegmentationSource, episodes: tuple[Episode, ...], size: int
    ) -> None:
        self.source = source
        self.episodes = episodes
        self.transform = resize_transform(size)

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> EpisodeTensors:
        return load_episode(self.source, self.episodes[index], self.transform)
