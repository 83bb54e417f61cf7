"""A learner's predictor with the inference options applied, identically wherever it is
used: the evaluation's reference loop and fast runner, the Python API, ``fewseg segment``.

:func:`refined_adapt` adapts the learner to a support set and wraps its predictor: the
learner's foreground log-odds, then the test-time refinements in order (each starting
from the log-odds before it), then the edge-aware upsampling with the query image as
guide, then the mask's weakly predicted regions dropped. The refinements work on the
learner's *encoder* features (the support-independent image → features part, answered
from the engine's feature store during an evaluation); a learner whose encoder is None
lends its backbone instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fewseg.episodes.image_views import mirror_images, zoomed_images
from fewseg.episodes.tensors import LabelledImages
from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner, Predictor
from fewseg.learners.prototypes import mask_weights
from fewseg.models.backbones import Backbone
from fewseg.models.encoder import Encoder
from fewseg.models.segmenter import foreground_logit
from fewseg.models.upsample import bilinear_resize
from fewseg.refinement.components import drop_weak_regions
from fewseg.refinement.guided import guided_filter, guided_upsample
from fewseg.refinement.nearest import nearest_log_odds
from fewseg.refinement.options import InferenceOptions
from fewseg.refinement.presence import presence_scores
from fewseg.refinement.prototypes import (
    cosine,
    feature_probability,
    mean_prototypes,
    shot_prototypes,
)
from fewseg.refinement.selfsupport import ssp_log_odds
from fewseg.refinement.superpixels import superpixel_vote
from fewseg.refinement.transductive import repri_log_odds

REFERENCE_SIZE = 400  # the edge radius is given at this size and scaled with the image
PROBABILITY_FLOOR = 1e-4  # filtered probabilities are clipped to [floor, 1 − floor]
EMPTY_LOG_ODDS = math.log(PROBABILITY_FLOOR / (1 - PROBABILITY_FLOOR))  # an empty mask's


def feature_encoder(learner: Learner, why: str) -> Encoder:
    """The learner's encoder, else its backbone; an error naming ``why`` when it has none."""
    encoder = _image_features(learner)
    if encoder is None:
        raise FewSegError(f"{why} needs image features: learner {learner.name!r} has no encoder")
    return encoder


def has_image_features(learner: Learner) -> bool:
    """Whether the refinements and the presence score can work with this learner."""
    return _image_features(learner) is not None


def _image_features(learner: Learner) -> Encoder | None:
    encoder = getattr(learner, "encoder", None)
    if encoder is not None:
        return encoder
    return next((m for m in learner.modules() if isinstance(m, Backbone)), None)


def _features(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """The encoder's feature map (of a pyramid, the last and deepest), without gradients."""
    with torch.no_grad():
        features = encoder(images)
    return (features[-1] if isinstance(features, tuple) else features).float()


def rgb(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images [B,3,H,W] → RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return (images.float() * std + mean).clamp(0, 1)


def edge_radius(options: InferenceOptions, height: int, width: int) -> int:
    """The guided filter's radius at an image of this size (given at 400x400)."""
    return max(1, round(options.edge_radius * max(height, width) / REFERENCE_SIZE))


def _logit(probability: torch.Tensor) -> torch.Tensor:
    p = probability.clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return (p.log() - (-p).log1p()).float()


def edge_aware(
    log_odds: torch.Tensor,
    guide: torch.Tensor,
    options: InferenceOptions,
    guide_high: torch.Tensor | None = None,
    regions: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-odds [B,1,h,w] at the size of ``guide`` (RGB in [0, 1], [B,3,h,w]) → log-odds
    with edges that follow the guide's (``options.edges``): the guided filter of the
    foreground probability, each superpixel's mean of it, or the mean of those two's
    log-odds. With ``guide_high`` (the same images at a larger size) the guided filter's
    coefficients are fitted at h x w and applied at its size (the fast guided filter);
    superpixels vote at h x w, then the log-odds are resized bilinearly (as an evaluation
    scored at the original size does); ``regions``: the guide's superpixels when known
    already."""
    if options.edges == "none":
        if guide_high is None:
            return log_odds
        return bilinear_resize(log_odds.float(), guide_high.shape[-2:])
    probability = torch.sigmoid(log_odds.double())
    edged = []
    if options.uses_guided_filter:
        radius = edge_radius(options, *guide.shape[-2:])
        if guide_high is None:
            edged.append(_logit(guided_filter(guide, probability, radius, options.edge_eps)))
        else:
            filtered = guided_upsample(guide, probability, guide_high, radius, options.edge_eps)
            edged.append(_logit(filtered))
    if options.uses_superpixels:
        voted = _logit(superpixel_vote(probability, guide, options.superpixel_scale, regions))
        edged.append(voted if guide_high is None else bilinear_resize(voted, guide_high.shape[-2:]))
    return edged[0] if len(edged) == 1 else torch.stack(edged).mean(dim=0)


def finished(
    log_odds: torch.Tensor,
    guide: torch.Tensor,
    options: InferenceOptions,
    guide_high: torch.Tensor | None = None,
    regions: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The refined log-odds [B,1,h,w] made into the final prediction: :func:`edge_aware`
    (arguments as there), then the weak regions of each mask dropped
    (``options.weak_regions``, fewseg.refinement.components)."""
    edged = edge_aware(log_odds, guide, options, guide_high, regions)
    return drop_weak_regions(edged.float(), options.weak_regions)


@dataclass
class SupportFeatures:
    """What the refinements know of the support set: its features, per-shot prototypes,
    and each feature cell's foreground and valid fractions."""

    features: torch.Tensor  # [K,C,h,w]
    per_shot: torch.Tensor  # [K,2,C] (background, foreground)
    present: torch.Tensor  # [K,2] bool
    foreground: torch.Tensor  # [K,h,w]
    valid: torch.Tensor  # [K,h,w]

    @classmethod
    def of(cls, encoder: Encoder, support: LabelledImages) -> SupportFeatures:
        features = _features(encoder, support.images)
        per_shot, present = shot_prototypes(features, support.masks, support.ignore)
        weights = mask_weights(support.masks, support.ignore, features.shape[-2:])
        return cls(features, per_shot, present, weights[:, 1], weights.sum(dim=1))

    def prototypes(self, query: torch.Tensor, shots: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(background, foreground) support prototypes for one query's features [C,h,w]:
        [C] each (``mean`` over shots) or [C,h,w] (``max``: each pixel's most similar
        shot's)."""
        if shots == "mean" or len(self.per_shot) == 1:
            bg, fg = mean_prototypes(self.per_shot, self.present)
            return bg, fg
        similarity = cosine(query[None], self.per_shot.flatten(0, 1))[0]  # [K·2,h,w]
        similarity = similarity.unflatten(0, self.per_shot.shape[:2])  # [K,2,h,w]
        similarity = similarity.masked_fill(~self.present[:, :, None, None], -2.0)
        nearest = similarity.argmax(dim=0)  # [2,h,w]: the shot per class and pixel
        chosen = self.per_shot.permute(1, 0, 2)  # [2,K,C]
        bg = chosen[0][nearest[0]].permute(2, 0, 1)  # [C,h,w]
        fg = chosen[1][nearest[1]].permute(2, 0, 1)
        return bg, fg


@dataclass
class RefinedPredictor:
    """A learner's predictor for one support set, with the inference options applied.
    ``__call__`` is a :data:`Predictor` (foreground log-odds [B,1,H,W] at the input's size);
    :meth:`refined_log_odds` stops before the edge-aware upsampling (the API applies it at
    each query's own size)."""

    learner: Learner
    support: LabelledImages | None  # None: built for options that never need it
    predictor: Predictor
    options: InferenceOptions
    # images, scale → their superpixels (the engine's memo); None: computed every call
    regions: Callable[[torch.Tensor, float], list[torch.Tensor]] | None = None
    _support_features: SupportFeatures | None = field(default=None, repr=False)

    def support_features(self) -> SupportFeatures:
        if self._support_features is None:
            if self.support is None:
                raise RuntimeError("this predictor was built without its support set")
            encoder = feature_encoder(self.learner, "refinement")
            self._support_features = SupportFeatures.of(encoder, self.support)
        return self._support_features

    def refinements(self) -> tuple[str, ...]:
        """The options' refinements; the default's only where the learner has features."""
        if self.options.automatic and not has_image_features(self.learner):
            return ()
        return self.options.refinements

    def query_features(self, images: torch.Tensor) -> torch.Tensor:
        return _features(feature_encoder(self.learner, "refinement"), images)

    @torch.no_grad()
    def learner_log_odds(self, images: torch.Tensor) -> torch.Tensor:
        """The learner's own foreground log-odds [B,1,H,W]."""
        return foreground_logit(self.predictor(images))[:, None].float()

    @torch.no_grad()
    def refined_log_odds(self, images: torch.Tensor) -> torch.Tensor:
        """The learner's log-odds after the refinements, at the input's size."""
        return self.refined_with_presence(images)[0]

    @torch.no_grad()
    def presence(self, images: torch.Tensor) -> torch.Tensor:
        """Each query's presence score [B] in [0, 1] (fewseg.refinement.presence)."""
        presence = self.refined_with_presence(images, need_presence=True)[1]
        assert presence is not None
        return presence

    def refined_with_presence(
        self, images: torch.Tensor, need_presence: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(refined log-odds [B,1,H,W], presence scores [B] when ``min_presence`` > 0 or
        ``need_presence``, else None): the query's features are computed once for both.
        With ``options.flip`` and ``options.zoom`` the log-odds are the mean over the
        query's views: itself, its mirror image (mirrored back), the query enlarged (resized
        back); the presence is the query's own. A query whose presence is below
        ``min_presence`` gets an empty mask (every log-odd at the probability floor's)."""
        need_presence = need_presence or self.options.min_presence > 0
        log_odds, presence = self._refined(images, need_presence)
        views = [log_odds]
        if self.options.flip:
            views.append(self._refined(mirror_images(images), False)[0].flip(-1))
        if self.options.zoom > 1:
            zoomed = self._refined(zoomed_images(images, self.options.zoom), False)[0]
            views.append(bilinear_resize(zoomed, images.shape[-2:]))
        if len(views) > 1:
            log_odds = torch.stack(views).mean(dim=0)
        if presence is None or self.options.min_presence <= 0:
            return log_odds, presence
        absent = presence < self.options.min_presence
        return log_odds.masked_fill(absent[:, None, None, None], EMPTY_LOG_ODDS), presence

    def _refined(
        self, images: torch.Tensor, need_presence: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The learner's log-odds after the refinements, and the presence scores when
        ``need_presence``."""
        log_odds = self.learner_log_odds(images)
        refinements = self.refinements()
        if not refinements and not need_presence:
            return log_odds, None
        support = self.support_features()
        features = self.query_features(images)
        size = features.shape[-2:]
        for name in refinements:
            if name == "nearest":  # the mean of the log-odds so far and the matching's
                matched = nearest_log_odds(
                    features, support.features, support.foreground, support.valid
                )
                log_odds = 0.5 * (log_odds + bilinear_resize(matched[:, None], log_odds.shape[-2:]))
                continue
            probability = feature_probability(log_odds, size)[:, 0]
            refined = []
            for query, first in zip(features, probability, strict=True):
                bg, fg = support.prototypes(query, self.options.combine_shots)
                if name == "ssp":
                    refined.append(ssp_log_odds(query, first, fg, bg))
                else:  # repri: its classifier starts from the mean prototype
                    prototype = mean_prototypes(support.per_shot, support.present)[1]
                    refined.append(
                        repri_log_odds(
                            query, support.features, support.foreground, support.valid, first,
                            prototype,
                        )
                    )  # fmt: skip
            log_odds = bilinear_resize(torch.stack(refined)[:, None], images.shape[-2:])
        if not need_presence:
            return log_odds, None
        probability = feature_probability(log_odds, size)[:, 0]
        prototype = mean_prototypes(support.per_shot, support.present)[1]
        return log_odds, presence_scores(features, probability, prototype)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        regions = None
        if self.regions is not None and self.options.uses_superpixels:
            regions = self.regions(images, self.options.superpixel_scale)
        log_odds = self.refined_log_odds(images)
        return finished(log_odds, rgb(images), self.options, regions=regions)


def refined_adapt(
    learner: Learner,
    support: LabelledImages,
    options: InferenceOptions,
    keep_support: bool = True,
    regions: Callable[[torch.Tensor, float], list[torch.Tensor]] | None = None,
) -> RefinedPredictor:
    """Adapt ``learner`` to ``support`` and apply ``options`` to its predictions. Without
    ``keep_support`` the predictor keeps the support set only when ``options`` need it (an
    evaluation keeps many predictors: the support images of each would add up to gigabytes);
    then it cannot score presence on request. ``regions``: where the query images'
    superpixels come from (the engine's memo), else they are computed at each call."""
    kept = support if keep_support or options.needs_support else None
    return RefinedPredictor(learner, kept, learner.adapt(support), options, regions)
