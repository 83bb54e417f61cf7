"""Hyperparameters of every learner in one flat record (a YAML config maps onto it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fewseg.errors import FewSegError


@dataclass
class LearnerConfig:
    """Options a learner does not use are ignored (and still recorded in its checkpoint)."""

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    freeze_backbone: bool = True  # pretrained backbones only; convnet always trains
    weights_path: str | None = None
    hidden: int = 64  # decoder head / prototype projection width
    # gradient-based adaptation: maml, fomaml, finetune (test-time), reptile (inner loop)
    inner_steps: int = 5
    inner_lr: float = 0.1
    first_order: bool = False
    head_only: bool = False  # ANIL: adapt only the decoder head
    meta_sgd: bool = False  # learn one inner learning rate per parameter tensor element
    batch_tasks: bool = True  # frozen encoder: adapt same-shape tasks together (vmap)
    # side of the grid the pixel losses use (masks subsampled, nearest); 0: the image size
    loss_size: int = 0
    reptile_optimizer: str = "sgd"  # inner optimizer of reptile: sgd | adam
    reptile_epsilon: float = 0.5  # outer step: θ ← θ + ε (mean θ' − θ)
    # prototypes: protonet
    scale_init: float = 20.0
    alignment_weight: float = 1.0  # prototype alignment regularisation (0 = off)
    # outer loop
    outer_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.loss_size < 0:
            raise FewSegError(f"loss_size must be >= 0 (0: the image size), got {self.loss_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LearnerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FewSegError(f"unknown learner option(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
