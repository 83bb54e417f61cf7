"""No learner ever updates a BatchNorm running statistic: in training, inner loops or adaptation."""

from __future__ import annotations

import pytest
import torch

from fewseg.data.spec import open_source
from fewseg.engine.config import TrainConfig
from fewseg.engine.train import training_batch
from fewseg.learners import build_learner

TRAINABLE = ["maml", "fomaml", "reptile", "protonet", "finetune"]
CASES = [(name, freeze) for name in TRAINABLE for freeze in (True, False)] + [("baseline", True)]


@pytest.mark.parametrize(("name", "freeze"), CASES)
def test_running_statistics_never_change(name: str, freeze: bool) -> None:
    options = {"backbone": "mobilenet_v2_s8", "freeze_backbone": freeze, "hidden": 8}
    if name not in ("protonet", "baseline"):
        options["inner_steps"] = 1
    if name == "baseline":
        options = {"backbone": "mobilenet_v2_s8"}
    learner = build_learner(name, options)
    before = {k: v.clone() for k, v in learner.state_dict().items() if "running" in k}
    assert before, "the MobileNetV2 backbone has BatchNorm buffers"
    source = open_source("synthetic:images=8,size=64")
    episodes = training_batch(
        source, source.fold_split("0").train, TrainConfig(meta_batch=2), 64, 0
    )
    learner.train()
    if learner.trainable:
        learner.meta_gradients(episodes)
    learner.eval()
    learner.adapt(episodes[0].support)(episodes[0].query.images)
    after = learner.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    batchnorms = [m for m in learner.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    learner.train()
    assert batchnorms and not any(m.training for m in batchnorms)
