"""Checkpoints: written atomically, loaded without arbitrary unpickling.

A checkpoint holds the learner's name and options, its weights, the optimizer's state,
the training configuration, the random state and the step. Checkpoints of fewseg 0.1
(format 1, one flat record of every learner's options) are read too.
"""

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
from fewseg.options import (
    as_dict,
    field_names,
    options_from,
    prediction_only_names,
    recorded_defaults,
)

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fewseg-checkpoint-2"
FORMAT_1 = "fewseg-checkpoint-1"


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
    """Model, optimizer, learner options, RNG state and step, via temp file + rename."""
    state = {
        "format": FORMAT,
        "fewseg_version": __version__,
        "step": step,
        "train_config": asdict(train),
        "learner_name": learner.name,
        "learner_options": as_dict(learner.options),
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
    """The checkpoint of a run directory (or a .pt path), in the current format."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FewSegError(f"{path}: no checkpoint found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, …
        raise FewSegError(f"{path}: corrupt or unsafe checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_1):
        raise FewSegError(f"{path}: not a fewseg checkpoint")
    if state["format"] == FORMAT_1:
        state = upgraded_from_format_1(state)
    if state["learner_name"] not in LEARNERS:
        raise FewSegError(f"{path}: a checkpoint of unknown learner {state['learner_name']!r}")
    return state


# fewseg 0.1 kept the protonet's backbone and neck beside each other
_FORMAT_1_RENAMES = {"protonet": (("encoder.", "encoder.backbone."), ("neck.", "encoder.neck."))}


def upgraded_from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in format 2: the learner's own options kept from the flat
    record (the others were ignored), ``first_order`` maml called fomaml, and the weights
    renamed where modules moved."""
    flat = dict(state["learner_config"])
    name = state["train_config"]["learner"]
    if name == "maml" and flat.get("first_order"):
        name = "fomaml"
    if name not in LEARNERS:
        return {**state, "format": FORMAT, "learner_name": name, "learner_options": {}}
    own = field_names(LEARNERS.get(name).Options)
    weights = state["learner"]
    for old, new in _FORMAT_1_RENAMES.get(name, ()):
        weights = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in weights.items()}
    upgraded = {k: v for k, v in state.items() if k != "learner_config"}
    return {
        **upgraded,
        "format": FORMAT,
        "train_config": {**state["train_config"], "learner": name},
        "learner_name": name,
        "learner_options": {k: v for k, v in flat.items() if k in own},
        "learner": weights,
    }


def saved_options(state: dict[str, Any]) -> dict[str, Any]:
    """The learner options of a checkpoint, an option added to fewseg after it was written
    taking the value that keeps the behaviour it had (:func:`recorded_defaults`)."""
    options_class = LEARNERS.get(state["learner_name"]).Options
    return {**recorded_defaults(options_class), **state["learner_options"]}


def restore_learner(
    state: dict[str, Any],
    path: str | Path,
    device: str = "cpu",
    prediction_options: dict[str, Any] | None = None,
) -> Learner:
    """Rebuild the learner a checkpoint was written for and load its weights;
    ``prediction_options`` replace the saved values of options declared prediction-only
    (any other option is an error: the weights were learned with it)."""
    learner_class = LEARNERS.get(state["learner_name"])
    changed = dict(prediction_options or {})
    allowed = prediction_only_names(learner_class.Options)
    fixed = sorted(set(changed) - set(allowed))
    if fixed:
        choice = f"only {', '.join(allowed)} may" if allowed else "none may"
        raise FewSegError(
            f"{checkpoint_path(path)}: option(s) {', '.join(fixed)} of {learner_class.name} "
            f"stay as trained ({choice} change at prediction)"
        )
    options = options_from(
        learner_class.Options,
        {**saved_options(state), **changed},
        str(checkpoint_path(path)),
        learner_class.name,
    )
    learner = learner_class(options)
    load_learner_state(learner, state, path)
    return learner.to(device)


def load_learner_state(learner: Learner, state: dict[str, Any], path: str | Path) -> None:
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError:
        raise FewSegError(
            f"{checkpoint_path(path)}: its weights do not fit learner {learner.name!r} "
            f"with backbone {learner.options.backbone!r} (a checkpoint of another architecture)"
        ) from None
