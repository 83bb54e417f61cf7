"""The tensors of one episode, loaded from a source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fewseg.data.source import SegmentationSource
from fewseg.episodes.sample_cache import resized_samples
from fewseg.episodes.sampler import Episode
from fewseg.episodes.transforms import sample_to_tensors


class SupportSet:
    """K labelled examples: images [K,3,H,W], masks [K,H,W] in {0,1}, ignore [K,H,W] bool.

    Made from those stacked tensors, or by :meth:`of_shots` from each shot's tensors as the
    loader holds them (``rows``, ``mask_rows``, ``ignore_rows``): the stacked tensors are
    then made when first asked for (a single shot's are views), and a feature cache or a
    memo finds the shots by identity, where a row of a stacked tensor, new each episode,
    would have to be hashed and compared.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        ignore: torch.Tensor,
        rows: tuple[torch.Tensor, ...] = (),
    ) -> None:
        self._images: torch.Tensor | None = images
        self._masks: torch.Tensor | None = masks
        self._ignore: torch.Tensor | None = ignore
        self.rows = rows
        self.mask_rows: tuple[torch.Tensor, ...] = ()
        self.ignore_rows: tuple[torch.Tensor, ...] = ()

    @classmethod
    def of_shots(
        cls,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        ignore: Sequence[torch.Tensor],
    ) -> SupportSet:
        """From each shot's image [3,H,W], mask [H,W] and ignore [H,W]."""
        if not len(images) == len(masks) == len(ignore) > 0:
            raise ValueError("a support set needs one mask and ignore map per image")
        support = cls.__new__(cls)
        support._images = support._masks = support._ignore = None
        support.rows, support.mask_rows, support.ignore_rows = (
            tuple(images),
            tuple(masks),
            tuple(ignore),
        )
        return support

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            self._images = _batch(self.rows)
        return self._images

    @property
    def masks(self) -> torch.Tensor:
        if self._masks is None:
            self._masks = _batch(self.mask_rows)
        return self._masks

    @property
    def ignore(self) -> torch.Tensor:
        if self._ignore is None:
            self._ignore = _batch(self.ignore_rows)
        return self._ignore

    @property
    def shots(self) -> int:
        return len(self.rows) if self.rows else self.images.shape[0]

    def encoder_images(self) -> torch.Tensor | Sequence[torch.Tensor]:
        """The images to pass to a feature cache: ``rows`` where there are, else ``images``."""
        return self.rows if self.rows else self.images

    def to(self, device: torch.device | str) -> SupportSet:
        """On ``device``: itself when all its tensors are there already (as
        ``Tensor.to``; an evaluation calls this per episode, and each tensor's own call
        costs more than the check)."""
        device = torch.device(device)
        if self.mask_rows:
            shots = (self.rows, self.mask_rows, self.ignore_rows)
            if all(t.device == device for ts in shots for t in ts):
                return self
            return SupportSet.of_shots(*([t.to(device) for t in ts] for ts in shots))
        stacked = (self.images, self.masks, self.ignore, *self.rows)
        if all(t.device == device for t in stacked):
            return self
        return SupportSet(
            self.images.to(device),
            self.masks.to(device),
            self.ignore.to(device),
            tuple(row.to(device) for row in self.rows),
        )

    def __repr__(self) -> str:  # without stacking the shots
        image = self.rows[0].shape if self.rows else self.images.shape[1:]
        return f"SupportSet(shots={self.shots}, image={tuple(image)})"


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


Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image, foreground, ignore


def _episode_tensors(episode: Episode, load: Callable[[str], Sample]) -> EpisodeTensors:
    support = SupportSet.of_shots(*zip(*(load(i) for i in episode.support), strict=True))
    query_image, query_mask, query_ignore = load(episode.query)
    return EpisodeTensors(episode.class_index, support, query_image, query_mask, query_ignore)


def _batch(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack; a single tensor becomes a view (1-shot support sets are not copied)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def load_episode(
    source: SegmentationSource, episode: Episode, transform: v2.Transform
) -> EpisodeTensors:
    c = episode.class_index
    return _episode_tensors(episode, lambda i: sample_to_tensors(source.load(i, c), transform))


def load_resized_episode(source: SegmentationSource, episode: Episode, size: int) -> EpisodeTensors:
    """The episode as :func:`load_episode` with :func:`resize_transform` gives it; each
    (image, class, size) is decoded and resized once per process (see sample_cache)."""
    samples = resized_samples(source)
    return _episode_tensors(episode, lambda i: samples.load(i, episode.class_index, size))


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
