"""The correlation model (fewseg.models.correlation) as the learners use it: its inputs for
a query given a support set, its logits with adapted parameters, and the examples of a
support-only loss for inner loops and test-time fine-tuning.

A support-only loss needs a query whose mask is known from the support set alone: with
K > 1 shots each shot is segmented from the other K − 1 (leave-one-out); with one shot, an
augmented copy of it (a random scale-crop and flip, the same for every support set: test
time stays deterministic) is segmented from the shot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.losses import balanced_pixel_weights, weighted_bce
from fewseg.learners.masks import subsample_masks
from fewseg.models.correlation import CorrelationModel
from fewseg.models.upsample import bilinear_resize
from fewseg.options import option

MODELS = ("head", "correlation")
Probe = tuple[torch.Tensor, torch.Tensor]  # a fitted probe: (weights, bias)
COPY_SEED = 0  # of the one-shot support's augmented copy
COPY_SCALE = (0.5, 1.0)  # its share of the shot's area


def prior_option() -> Any:
    """The ``prior`` option of a learner that can run on the correlation model."""
    return option(True, "correlation model: PFENet's prior mask as an input")


def balanced_option() -> Any:
    """The ``balanced`` option of a learner that can run on the correlation model."""
    return option(
        False,
        "correlation model: class-balanced nearest-cell statistics (each class's same "
        "fraction of support cells averaged) instead of the plain maxima",
    )


PROBES = ("none", "input", "mean")
PROBE_MEAN_SHOTS = 2  # a probe fitted on one image does not generalise (README, issue #17)


def probe_option() -> Any:
    """The ``probe`` option of a learner that can run on the correlation model."""
    return option(
        "none",
        "correlation model: a linear probe fitted on all the support's shots (class-balanced "
        "logistic regression on frozen features): none, input (a decoder input, trained "
        "with), mean (from 2 shots, predictions are the mean of the model's and the probe's "
        "log-odds; training unchanged)",
    )


def check_probe(value: str) -> None:
    """A one-line error unless ``value`` is one of :data:`PROBES`."""
    if value not in PROBES:
        raise FewSegError(f"probe must be one of {', '.join(PROBES)}, got {value!r}")


def shot_mean_option() -> Any:
    """The ``shot_mean`` option of a learner that can run on the correlation model."""
    return option(
        True,
        "correlation model, K shots: the mean of each shot's logits (else one prediction "
        "from statistics combined over the shots)",
    )


def correlation_tasks(options: Any) -> CorrelationTasks:
    """The correlation model a learner's ``options`` describe (backbone, weights, ``hidden``,
    ``prior``, ``balanced``, ``probe``, ``shot_mean``), as its learner uses it (``.model`` is
    the model)."""
    model = CorrelationModel(
        options.backbone, options.pretrained, options.weights_path, options.hidden,
        prior=options.prior, balanced=options.balanced, probe=options.probe == "input",
    )  # fmt: skip
    return CorrelationTasks(model, options.shot_mean, probe_mean=options.probe == "mean")


def augmented_copy(shot: LabelledImages, generator: torch.Generator) -> LabelledImages:
    """The shot (one image) scale-cropped (``COPY_SCALE`` of its area, its aspect) back to
    its size and flipped with probability 1/2; a crop that loses all the foreground is
    drawn again (up to ten times, then the whole image is kept)."""
    height, width = shot.images.shape[-2:]
    for _ in range(10):
        scale = COPY_SCALE[0] + (COPY_SCALE[1] - COPY_SCALE[0]) * float(
            torch.rand((), generator=generator)
        )
        crop_h, crop_w = max(1, round(height * scale**0.5)), max(1, round(width * scale**0.5))
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
        images = TF.resized_crop(
            shot.images, top, left, crop_h, crop_w, [height, width], antialias=True
        )
        labels = torch.stack([shot.masks, shot.ignore.to(shot.masks.dtype)], dim=1)
        labels = TF.resized_crop(
            labels, top, left, crop_h, crop_w, [height, width], InterpolationMode.NEAREST
        )
        if flip:
            images, labels = images.flip(-1), labels.flip(-1)
        if bool(labels[:, 0].any()):
            return LabelledImages(images, labels[:, 0], labels[:, 1] > 0.5)
    return shot


@dataclass(frozen=True)
class DecoderInputs:
    """The decoder's inputs for B query images: stride groups and skip features with
    ``shots`` · B rows (shot-major, :meth:`CorrelationModel.inputs`), each query compared
    with each of ``shots`` support sets whose logits are averaged (1: one comparison)."""

    groups: list[torch.Tensor]
    skip: torch.Tensor
    shots: int = 1


class CorrelationTasks:
    """What a learner asks of its correlation model. With ``shot_mean`` a K-shot support
    set gives K predictions, one per shot, whose logits are averaged (HSNet's K-shot
    voting, here a mean); otherwise one prediction from statistics combined over shots.
    With ``probe_mean`` a prediction from ``PROBE_MEAN_SHOTS`` shots on is the mean of the
    model's log-odds and the probe's (:meth:`predictor`); losses stay the model's own."""

    def __init__(
        self, model: CorrelationModel, shot_mean: bool = True, probe_mean: bool = False
    ) -> None:
        self.model = model
        self.shot_mean = shot_mean
        self.probe_mean = probe_mean

    def inputs(
        self, images: torch.Tensor, support: LabelledImages, probe: Probe | None = None
    ) -> DecoderInputs:
        """The decoder's inputs for ``images`` against the support set: each shot compared
        alone with ``shot_mean`` (one batch of K · B rows), else the shots together. The
        probe, when the model takes it, is fitted on all the shots either way (``probe``:
        already fitted on this support set)."""
        probe_map = None
        if self.model.probe:
            probe = probe or self.model.fit_probe(support.images, support.masks, support.ignore)
            probe_map = self.model.probe_map(images, probe)
        per_shot = self.shot_mean and support.shots > 1
        groups, skip = self.model.inputs(
            images, support.images, support.masks, support.ignore, probe_map, per_shot
        )
        return DecoderInputs(groups, skip, support.shots if per_shot else 1)

    def logits(
        self,
        params: Mapping[str, torch.Tensor],
        inputs: DecoderInputs,
        size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Foreground logits [B,1,H,W] at ``size`` (the mean over the compared support
        sets), the decoder's ``params`` (names relative to the decoder, e.g.
        ``head.0.weight``) substituted."""
        logits = functional_call(self.model.decoder, dict(params), (inputs.groups, inputs.skip))
        if inputs.shots > 1:
            logits = logits.view(inputs.shots, -1, *logits.shape[1:]).mean(dim=0)
        return bilinear_resize(logits, size)

    def loss_function(
        self, inputs: DecoderInputs, masks: torch.Tensor, ignore: torch.Tensor
    ) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor]:
        """params → the class-balanced BCE (``foreground_bce``) of the decoder's logits at
        its own grid (stride 4) against ``masks`` subsampled there (nearest pixel)."""
        grid = inputs.skip.shape[-2:]
        _, masks, ignore = subsample_masks(masks, ignore, max(grid))
        target, weights = balanced_pixel_weights(masks, ignore, inputs.skip.dtype)

        def loss(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return weighted_bce(self.logits(params, inputs, grid), target, weights)

        return loss

    def episodic_loss(self, episodes: Sequence[EpisodeTensors]) -> torch.Tensor:
        """The mean loss of each episode's query segmented from its support set, with the
        model's own parameters (plain episodic training)."""
        losses = []
        for episode in episodes:
            query = episode.query
            inputs = self.inputs(query.images, episode.support)
            losses.append(self.loss_function(inputs, query.masks, query.ignore)({}))
        return torch.stack(losses).mean()

    def predictor(
        self, support: LabelledImages, params: Mapping[str, torch.Tensor] | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Query images → foreground logits [B,1,H,W] at their size given the support set,
        the decoder's ``params`` substituted (None: the model as it is); with ``probe_mean``
        (and enough shots) averaged with the probe's log-odds. The probe is fitted once, here."""
        params = {} if params is None else params
        averaged = self.probe_mean and support.shots >= PROBE_MEAN_SHOTS
        probe = None
        if self.model.probe or averaged:
            probe = self.model.fit_probe(support.images, support.masks, support.ignore)

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            size = query_images.shape[-2:]
            logits = self.logits(params, self.inputs(query_images, support, probe), size)
            if not averaged:
                return logits
            probe_map = self.model.probe_map(query_images, probe)
            return 0.5 * (logits + bilinear_resize(probe_map[:, None], size))

        return predict

    def support_examples(
        self, support: LabelledImages
    ) -> list[tuple[DecoderInputs, LabelledImages]]:
        """(inputs, the labelled query they segment) of the support-only loss."""
        if support.shots == 1:
            generator = torch.Generator().manual_seed(COPY_SEED)
            copy = augmented_copy(support, generator)
            return [(self.inputs(copy.images, support), copy)]
        examples = []
        for k in range(support.shots):
            rest = support.select([j for j in range(support.shots) if j != k])
            shot = support.select([k])
            examples.append((self.inputs(shot.images, rest), shot))
        return examples
