"""Training configuration: defaults ← YAML file ← command-line flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from fewseg.errors import FewSegError
from fewseg.learners.config import LearnerConfig


@dataclass
class TrainConfig:
    """Everything that determines a training run (learner hyperparameters aside)."""

    learner: str = "maml"
    dataset: str = "synthetic"
    fold: str = "0"
    shots: int = 1
    max_shots: int | None = None  # each task draws its shot count from shots..max_shots
    steps: int = 1000
    seed: int = 0
    meta_batch: int = 4
    size: int | None = None  # None: the dataset's default size
    augment: bool = True
    min_mask_pixels: int = 0
    val_fraction: float = 0.1  # share of the meta-train classes held out for validation
    val_every: int = 100  # steps between validations (0: never)
    val_episodes: int = 100
    checkpoint_every: int = 50
    log_every: int = 10
    device: str = "cpu"
    backend: str = "auto"  # torchrun runs: auto (nccl on CUDA, else gloo), gloo or nccl
    dist_timeout: float = 600.0  # seconds a collective waits for the other ranks


TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}
LEARNER_FIELDS = {f.name for f in fields(LearnerConfig)}


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


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    """Check a YAML value against the field's default type (ints accepted for floats)."""
    if value is None or default is None:
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise FewSegError(f"{source}: option {name} must be {expected.__name__}, got {value!r}")
    return value


def resolve_config(
    file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config"
) -> tuple[TrainConfig, LearnerConfig]:
    """Merge defaults, then the YAML file, then flags (flags given as None are absent)."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    unknown = sorted(set(merged) - TRAIN_FIELDS - LEARNER_FIELDS)
    if unknown:
        raise FewSegError(f"{source}: unknown option(s) {', '.join(unknown)}")
    train_defaults, learner_defaults = asdict(TrainConfig()), asdict(LearnerConfig())
    train = {
        k: _coerce(k, v, train_defaults[k], source) for k, v in merged.items() if k in TRAIN_FIELDS
    }
    learner = {
        k: _coerce(k, v, learner_defaults[k], source)
        for k, v in merged.items()
        if k in LEARNER_FIELDS
    }
    config = TrainConfig(**train)
    check_train_config(config)
    return config, LearnerConfig(**learner)


def check_train_config(config: TrainConfig) -> None:
    for name in ("shots", "steps", "meta_batch", "val_episodes", "checkpoint_every", "log_every"):
        if getattr(config, name) < 1:
            raise FewSegError(f"option {name} must be >= 1, got {getattr(config, name)}")
    if config.max_shots is not None and config.max_shots < config.shots:
        raise FewSegError(
            f"option max_shots must be >= shots ({config.shots}), got {config.max_shots}"
        )
    if not 0.0 <= config.val_fraction < 1.0:
        raise FewSegError(f"option val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.val_every < 0:
        raise FewSegError(f"option val_every must be >= 0, got {config.val_every}")
    if config.backend not in ("auto", "gloo", "nccl"):
        raise FewSegError(f"option backend must be auto, gloo or nccl, got {config.backend!r}")
    if not config.dist_timeout > 0:
        raise FewSegError(f"option dist_timeout must be > 0, got {config.dist_timeout}")


def write_yaml(path: Path, train: TrainConfig, learner: LearnerConfig) -> None:
    from fewseg.fileio import atomic_write

    text = yaml.safe_dump({**asdict(train), **asdict(learner)}, sort_keys=False)
    atomic_write(path, lambda handle: handle.write(text.encode()))
