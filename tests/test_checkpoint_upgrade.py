"""Checkpoints written by fewseg 0.1 (format 1: one flat record of every learner's options,
protonet's backbone and neck side by side) load in the current format."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from fewseg.engine.checkpoint import read_checkpoint, restore_learner
from fewseg.engine.config import TrainConfig
from fewseg.learners import build_learner

# LearnerConfig of fewseg 0.1, as its checkpoints recorded it
FLAT_DEFAULTS = {
    "backbone": "mobilenet_v2", "pretrained": True, "freeze_backbone": True,
    "weights_path": None, "hidden": 64, "inner_steps": 5, "inner_lr": 0.1,
    "first_order": False, "head_only": False, "meta_sgd": False, "batch_tasks": True,
    "loss_size": 0, "reptile_optimizer": "sgd", "reptile_epsilon": 0.5, "scale_init": 20.0,
    "alignment_weight": 1.0, "outer_lr": 1e-3,
}  # fmt: skip


def format_1(path: Path, learner: str, weights: dict, **options: object) -> None:
    state = {
        "format": "fewseg-checkpoint-1",
        "fewseg_version": "0.1.0",
        "step": 7,
        "train_config": {**asdict(TrainConfig()), "learner": learner},
        "learner_config": {**FLAT_DEFAULTS, **options},
        "learner": weights,
        "optimizer": {},
        "rng": {"torch": torch.get_rng_state()},
        "extra": {"size": 96},
    }
    torch.save(state, path / "checkpoint.pt")


def test_a_protonet_of_format_1_loads_with_its_modules_renamed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = {"backbone": "convnet", "hidden": 16, "alignment_weight": 0.5}
    learner = build_learner("protonet", options)
    old_names = {
        k.replace("encoder.backbone.", "encoder.").replace("encoder.neck.", "neck."): v
        for k, v in learner.state_dict().items()
    }
    assert "neck.0.weight" in old_names and "encoder.blocks.0.0.weight" in old_names
    format_1(tmp_path, "protonet", old_names, **options, inner_lr=0.3)
    state = read_checkpoint(tmp_path)
    assert state["format"] == "fewseg-checkpoint-2" and state["learner_name"] == "protonet"
    assert state["learner_options"]["alignment_weight"] == 0.5
    assert "inner_lr" not in state["learner_options"]  # another learner's option, ignored
    restored = restore_learner(state, tmp_path)
    for key, value in learner.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_a_first_order_maml_of_format_1_is_a_fomaml(tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = {"backbone": "convnet", "hidden": 8, "inner_lr": 0.25}
    learner = build_learner("fomaml", options)
    format_1(tmp_path, "maml", learner.state_dict(), **options, first_order=True)
    restored = restore_learner(read_checkpoint(tmp_path), tmp_path)
    assert restored.name == "fomaml" and restored.first_order
    assert restored.options.inner_lr == 0.25
    for key, value in learner.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_an_lrd2_run_from_before_enlarge_reads_its_images_as_given(tmp_path: Path) -> None:
    """lrd2 runs written before the ``enlarge`` option existed fitted the probe on the
    images as given: restored, they still do (the option's ``before``), not at its new
    default of 1.4."""
    from fewseg.engine.checkpoint import save_checkpoint

    learner = build_learner("lrd2", {"enlarge": 1})
    with torch.no_grad():
        learner.shift.fill_(0.5)
    save_checkpoint(tmp_path, 3, TrainConfig(learner="lrd2"), learner, learner.make_optimizer())
    state = read_checkpoint(tmp_path)
    del state["learner_options"]["enlarge"]
    restored = restore_learner(state, tmp_path)
    assert restored.options.enlarge == 1.0 and restored.encoder.enlarge == 1.0
    assert float(restored.shift) == 0.5
    assert build_learner("lrd2").encoder.enlarge == 1.4
