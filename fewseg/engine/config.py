"""Training configuration: defaults ← YAML file ← command-line flags.

:class:`TrainConfig` holds what determines a training run besides the learner's own
options, which each learner declares (fewseg.learners.base); :func:`resolve_config` splits
merged values between the two. Torch-free: the command line's help reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fewseg.errors import FewSegError
from fewseg.options import field_names, option, options_from

if TYPE_CHECKING:
    from fewseg.learners.base import LearnerOptions


@dataclass
class TrainConfig:
    """Everything that determines a training run (the learner's options aside)."""

    learner: str = option("maml", "the learner to meta-train (fewseg list)")
    dataset: str = option("synthetic", "dataset spec, kind:ROOT[,key=value...]")
    fold: str | None = option(
        None, "the fold whose meta-train classes train (default: the dataset's, 0 for most)"
    )
    shots: int = option(1, "support images per training task")
    max_shots: int | None = option(
        None, "each task draws its shot count from shots..max_shots (one model, all K)"
    )
    steps: int = option(1000, "meta-training steps")
    seed: int = option(0, "seed of the initial weights, the tasks and their augmentation")
    meta_batch: int = option(4, "tasks per step")
    size: int | None = option(None, "square image size (default: the dataset's)")
    augment: bool = option(True, "random scale-crop, flip and colour jitter of each task")
    pseudo_ratio: float | None = option(
        None,
        "share of tasks drawn as self-supervised superpixel episodes from the fold's "
        "meta-training images (default: 0; 1 for an unlabeled dataset)",
    )
    superpixels: str = option("felzenszwalb", "pseudo-classes: felzenszwalb or slic regions")
    min_mask_pixels: int = option(0, "drop (class, image) pairs whose mask has fewer pixels")
    index_cache: str | None = option(
        None, "folder of dataset indexes (default: ~/.cache/fewseg/index)"
    )
    val_fraction: float = option(0.1, "share of the meta-train classes held out for validation")
    val_every: int = option(100, "steps between validations (0: never)")
    val_episodes: int = option(100, "episodes of each validation")
    checkpoint_every: int = option(50, "steps between checkpoints")
    log_every: int = option(10, "steps between metric records")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    precision: str = option(
        "fp32", "fp32, or bf16: mixed precision by torch.autocast (CUDA; also runs on cpu)"
    )
    backend: str = option("auto", "torchrun runs: auto (nccl on CUDA, else gloo), gloo or nccl")
    dist_timeout: float = option(600.0, "torchrun runs: seconds a collective waits for the others")


TRAIN_FIELDS = field_names(TrainConfig)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FewSegError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise FewSegError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise FewSegError(f"{path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(
    file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config"
) -> tuple[TrainConfig, LearnerOptions]:
    """Merge defaults, then the YAML file, then flags (flags given as None are absent);
    the keys that are not training options are the learner's, checked against its
    ``Options``."""
    from fewseg.learners import LEARNERS

    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    train_values = {k: v for k, v in merged.items() if k in TRAIN_FIELDS}
    config = options_from(TrainConfig, train_values, source)
    check_train_config(config)
    learner_class = LEARNERS.get(config.learner)
    learner_values = {k: v for k, v in merged.items() if k not in TRAIN_FIELDS}
    options = options_from(learner_class.Options, learner_values, source, config.learner)
    return config, options


def check_train_config(config: TrainConfig) -> None:
    for name in ("shots", "steps", "meta_batch", "val_episodes", "checkpoint_every", "log_every"):
        if getattr(config, name) < 1:
            raise FewSegError(f"option {name} must be >= 1, got {getattr(config, name)}")
    if config.max_shots is not None and config.max_shots < config.shots:
        raise FewSegError(
            f"option max_shots must be >= shots ({config.shots}), got {config.max_shots}"
        )
    if config.size is not None and config.size < 8:
        raise FewSegError(f"option size must be >= 8, got {config.size}")
    if config.pseudo_ratio is not None and not 0.0 <= config.pseudo_ratio <= 1.0:
        raise FewSegError(f"option pseudo_ratio must be in [0, 1], got {config.pseudo_ratio}")
    if config.superpixels not in ("felzenszwalb", "slic"):
        raise FewSegError(
            f"option superpixels must be felzenszwalb or slic, got {config.superpixels!r}"
        )
    if not 0.0 <= config.val_fraction < 1.0:
        raise FewSegError(f"option val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.val_every < 0:
        raise FewSegError(f"option val_every must be >= 0, got {config.val_every}")
    if config.backend not in ("auto", "gloo", "nccl"):
        raise FewSegError(f"option backend must be auto, gloo or nccl, got {config.backend!r}")
    if not config.dist_timeout > 0:
        raise FewSegError(f"option dist_timeout must be > 0, got {config.dist_timeout}")


def write_yaml(path: Path, train: TrainConfig, options: LearnerOptions) -> None:
    from fewseg.fileio import atomic_write

    text = yaml.safe_dump({**asdict(train), **asdict(options)}, sort_keys=False)
    atomic_write(path, lambda handle: handle.write(text.encode()))
