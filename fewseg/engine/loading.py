"""The one way to a ready learner: a training-free learner by name, or a trained one from
a ``fewseg train`` run directory, with the image size it works at and where it came from.
The Python API, ``fewseg evaluate``, ``fewseg segment``, the demo and the benchmark all
load through :func:`load_learner`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewseg.engine.checkpoint import checkpoint_path, read_checkpoint, restore_learner
from fewseg.engine.device import resolve_device
from fewseg.engine.precision import check_precision
from fewseg.errors import FewSegError
from fewseg.learners.base import LEARNERS, Learner, build_learner

DEFAULT_SIZE = 400
"""The image size of a learner that states none (a training-free one): HSNet's."""


@dataclass(frozen=True)
class LoadedLearner:
    learner: Learner
    size: int | None  # the square size it was trained at; None: any
    trained: dict[str, Any] = field(default_factory=dict)  # checkpoint, step, train_config
    device: str = "cpu"
    precision: str = "fp32"  # what it runs at (fewseg.engine.precision)

    def image_size(self, requested: int | None = None, fallback: int = DEFAULT_SIZE) -> int:
        """The size to work at: ``requested``, else the training size, else ``fallback``."""
        return requested or self.size or fallback


def load_learner(
    name_or_run: str | Path,
    device: str | None = "cpu",
    options: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> LoadedLearner:
    """A registered learner's name (it must be training-free; ``options`` are its options,
    e.g. ``weights_path``) or a run directory / checkpoint file of ``fewseg train``
    (``state``: its content, when read already; ``options``: values of its prediction-only
    options, the others stay as trained). ``precision``: fp32, bf16 or fp16 (CUDA),
    the autocast it is to run under."""
    device = resolve_device(device)
    check_precision(precision, device)
    text = str(name_or_run)
    if text in LEARNERS:
        cls = LEARNERS.get(text)
        if cls.trainable:
            raise FewSegError(
                f"learner {text!r} must be trained: load a `fewseg train` run directory "
                "(--checkpoint DIR)"
            )
        learner = build_learner(text, options).to(device).eval()
        return LoadedLearner(learner, None, {}, device, precision)
    path = Path(name_or_run)
    if state is None and not checkpoint_path(path).is_file() and not path.exists():
        known = ", ".join(e.name for e in LEARNERS if not e.factory.trainable)
        raise FewSegError(
            f"{text}: neither a training-free learner ({known}) nor a `fewseg train` run directory"
        )
    state = state if state is not None else read_checkpoint(path)
    learner = restore_learner(state, path, device, options).eval()
    trained = {
        "checkpoint": str(path),
        "step": state["step"],
        "train_config": state["train_config"],
        **({"prediction_options": dict(options)} if options else {}),
    }
    return LoadedLearner(learner, state["extra"].get("size"), trained, device, precision)
