"""``finetune``: ordinary training on the meta-train classes, then fine-tuning on the support
set — the transfer-learning control that meta-learning has to beat.

Without an episodic objective, pre-training plus fine-tuning is a strong few-shot
baseline: Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019; Tian et al.,
"Rethinking Few-Shot Image Classification", ECCV 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.adaptation import GradientAdaptedSegmenter, GradientOptions
from fewseg.learners.base import register_learner
from fewseg.options import option


@dataclass
class FineTuneOptions(GradientOptions):
    outer_lr: float = option(1e-3, "learning rate of the training optimizer (Adam)")


@register_learner(
    "finetune", "control: plain segmentation training, then SGD fine-tuning on the support set"
)
class FineTune(GradientAdaptedSegmenter):
    """Train: foreground BCE of the plain segmenter on every labelled image of the episodes
    (supports and queries, each with its episode's class mask), averaged over all valid
    pixels of the batch; every trainable parameter learns, with the base Adam(``outer_lr``).

    Test: the base :meth:`adapt` — ``inner_steps`` plain SGD steps at ``inner_lr`` on the
    support loss, the same number of steps and learning rate as MAML's inner loop, on the
    same adapted parameters (the head alone under ``head_only`` or a frozen encoder).
    """

    Options = FineTuneOptions
    options: FineTuneOptions

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.outer_parameters(), lr=self.options.outer_lr)

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        if not episodes:
            raise FewSegError("finetune: empty meta-batch")
        device = next(self.model.head.parameters()).device
        if self.tasks is not None:  # the correlation model: each query from its support
            tasks = [e.to(device) for e in episodes]
            params = self.initial_parameters()
            loss = torch.stack([self.query_loss(t.query, t.support)(params) for t in tasks]).mean()
            loss.backward()
            return {"loss": loss.item()}
        examples = LabelledImages.cat([e.labelled_images() for e in episodes]).to(device)
        images = examples.images
        loss = self.pixel_loss(
            self.inputs(images), images.shape[-2:], examples.masks, examples.ignore
        )(self.initial_parameters())
        loss.backward()
        return {"loss": loss.item()}
