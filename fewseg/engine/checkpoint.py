"""Checkpoints: written atomically, loaded without arbitrary unpickling."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fewseg import __version__
from fewseg.engine.config import TrainConfig
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write
from fewseg.learners.base import LEARNERS, Learner
from fewseg.learners.config import LearnerConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fewseg-checkpoint-1"


def checkpoint_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path if path.suffix == ".pt" else path / CHECKPOINT_NAME


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    train: TrainConfig,
    learner: Learner,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Model, optimizer, learner config, RNG state and step, via temp file + rename."""
    state = {
        "format": FORMAT,
        "fewseg_version": __version__,
        "step": step,
        "train_config": asdict(train),
        "learner_config": learner.config.to_dict(),
        "learner": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "extra": extra or {},
    }
    path = checkpoint_path(run_dir)
    atomic_write(path, lambda handle: torch.save(state, handle))
    remove_stale_temp_files(path)
    return path


def remove_stale_temp_files(path: Path) -> None:
    """Delete temp files that a process killed while writing ``path`` left beside it.

    They are never read (a checkpoint is only ever loaded from its final name).
    """
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        temp.unlink(missing_ok=True)


def read_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FewSegError(f"{path}: no checkpoint found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, …
        raise FewSegError(f"{path}: corrupt or unsafe checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FewSegError(f"{path}: not a fewseg checkpoint")
    return state


def restore_learner(state: dict[str, Any], path: str | Path, device: str = "cpu") -> Learner:
    """Rebuild the learner a checkpoint was written for and load its weights."""
    train = state["train_config"]
    learner = LEARNERS.get(train["learner"])(LearnerConfig.from_dict(state["learner_config"]))
    load_learner_state(learner, state, path)
    return learner.to(device)


def load_learner_state(learner: Learner, state: dict[str, Any], path: str | Path) -> None:
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError:
        raise FewSegError(
            f"{checkpoint_path(path)}: its weights do not fit learner {learner.name!r} "
            f"with backbone {learner.config.backbone!r} (a checkpoint of another architecture)"
        ) from None
