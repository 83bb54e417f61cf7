"""Meta-training: episodes from the fold's meta-train classes, checkpoints, exact resume.

Everything random in task i of step t — which episode, which augmentation — is drawn from
a generator seeded by (seed, t, i), so a run resumed from step t continues exactly as the
uninterrupted run would, on any number of processes (docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fewseg.data.source import SegmentationSource
from fewseg.data.spec import open_source
from fewseg.engine import distributed
from fewseg.engine.checkpoint import (
    checkpoint_path,
    load_learner_state,
    read_checkpoint,
    save_checkpoint,
    saved_options,
)
from fewseg.engine.config import TrainConfig, write_yaml
from fewseg.engine.features import attached, training_stores
from fewseg.engine.interrupt import StopRequest, TrainingInterrupted
from fewseg.engine.precision import autocast, check_precision
from fewseg.engine.run_lock import check_run_dir, run_lock
from fewseg.engine.runner import score_plan
from fewseg.engine.settings import EvaluationSettings
from fewseg.episodes.pseudo import SuperpixelSettings, draw_pseudo_episode
from fewseg.episodes.sampler import draw_episode, episode_plan, usable_classes
from fewseg.episodes.tensors import EpisodeTensors, load_episode, load_resized_episode
from fewseg.episodes.transforms import augment_transform
from fewseg.errors import FewSegError
from fewseg.learners.base import LEARNERS, Learner, LearnerOptions
from fewseg.options import as_dict, changed_options, recorded_defaults


class TrainingDiverged(FewSegError):
    """A non-finite loss: the run stops, the last good checkpoint stays as it was."""


@dataclass(frozen=True)
class ClassPlan:
    """Which of the fold's meta-train classes train and which validate."""

    train: tuple[int, ...]
    validation: tuple[int, ...]


def hold_out_classes(classes: Sequence[int], fraction: float) -> ClassPlan:
    """Every n-th meta-train class (n ≈ 1/fraction) is held out for validation."""
    if fraction <= 0 or len(classes) < 2:
        return ClassPlan(tuple(classes), ())
    every = max(2, round(1 / fraction))
    validation = tuple(c for i, c in enumerate(classes) if i % every == every - 1)
    return ClassPlan(tuple(c for c in classes if c not in set(validation)), validation)


def task_seed(seed: int, step: int, task: int) -> list[int]:
    return [seed, step, task]


def tasks_of_rank(meta_batch: int, rank: int, world_size: int) -> range:
    """Rank r of W takes tasks [r·B/W, (r+1)·B/W) of the global meta-batch of B tasks."""
    if meta_batch % world_size:
        raise FewSegError(
            f"meta_batch {meta_batch} does not split evenly across {world_size} processes: "
            f"use a multiple of {world_size}"
        )
    share = meta_batch // world_size
    return range(rank * share, (rank + 1) * share)


def training_batch(
    source: SegmentationSource,
    classes: Sequence[int],
    config: TrainConfig,
    size: int,
    step: int,
    rank: int = 0,
    world_size: int = 1,
    pseudo_images: Sequence[str] = (),
) -> list[EpisodeTensors]:
    """This rank's tasks of step ``step``; task i is a pure function of (seed, step, i), so
    the global meta-batch is the same whatever the number of processes. With a
    ``pseudo_ratio``, that share of the tasks (drawn per task) are self-supervised
    episodes from ``pseudo_images``."""
    batch = []
    ratio = config.pseudo_ratio or 0.0
    superpixels = SuperpixelSettings(config.superpixels)
    for task in tasks_of_rank(config.meta_batch, rank, world_size):
        rng = np.random.default_rng(task_seed(config.seed, step, task))
        shots = config.shots
        if config.max_shots is not None:
            shots = int(rng.integers(config.shots, config.max_shots + 1))
        if ratio > 0 and (ratio >= 1 or rng.random() < ratio):
            batch.append(draw_pseudo_episode(source, pseudo_images, shots, size, rng, superpixels))
            continue
        episode = draw_episode(source, classes, shots, rng)
        if not config.augment:
            batch.append(load_resized_episode(source, episode, size))
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            batch.append(load_episode(source, episode, augment_transform(size)))
    return batch


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line torn by a crash mid-write is dropped on resume."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """``metrics.jsonl`` (one record per logged step) plus TensorBoard scalars."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.enabled = enabled  # off on every rank but 0
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        kept = []
        if self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and _logged_step(line) <= resume_step
            ]
        self.path.write_text("".join(f"{line}\n" for line in kept))
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def validate(
    learner: Learner,
    source: SegmentationSource,
    classes: Sequence[int],
    config: TrainConfig,
    size: int,
) -> float:
    """mIoU (percent) on a fixed episode list of the held-out meta-train classes."""
    plan = episode_plan(source, classes, config.shots, config.val_episodes, config.seed)
    settings = EvaluationSettings(
        fold=config.fold,
        shots=config.shots,
        episodes=config.val_episodes,
        size=size,
        device=distributed.local_device(config.device),
        progress=False,
        precision=config.precision,
    )
    scores = score_plan(learner, source, plan, settings)
    return 100 * scores.miou()


def train(
    config: TrainConfig,
    options: LearnerOptions,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-train a learner; returns a summary (steps, seconds, last losses, validation)."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    check_precision(config.precision, config.device, training=True)
    source = open_source(config.dataset, config.min_mask_pixels, config.index_cache)
    if config.fold is None:  # the dataset's default, recorded as such
        config = replace(config, fold=source.default_fold)
    if config.pseudo_ratio is None:  # an unlabeled dataset: self-supervised episodes only
        config = replace(config, pseudo_ratio=0.0 if source.classes() else 1.0)
    size = config.size or source.default_size
    split = source.fold_split(config.fold)
    most_shots = config.max_shots or config.shots
    usable, _ = usable_classes(source, split.train, most_shots)
    if not usable and config.pseudo_ratio < 1:
        raise FewSegError(f"fold {config.fold}: no meta-train class has {most_shots + 1} images")
    classes = hold_out_classes(usable, config.val_fraction)
    pseudo_images = source.pseudo_image_ids(config.fold) if config.pseudo_ratio else ()
    if config.pseudo_ratio and not pseudo_images:
        raise FewSegError(f"fold {config.fold}: no images for self-supervised episodes")
    rank, world = distributed.rank(), distributed.world_size()
    tasks_of_rank(config.meta_batch, rank, world)  # a meta-batch that does not split fails now

    torch.manual_seed(config.seed)  # the initial weights are part of the run
    learner = LEARNERS.get(config.learner)(options)
    if not learner.trainable:
        raise FewSegError(f"learner {config.learner!r} is training-free: use `fewseg evaluate`")
    device = torch.device(distributed.local_device(config.device))
    learner.to(device)
    optimizer = learner.make_optimizer()
    with run_lock(run_dir):  # taken before anything in the directory is read or written
        start, elapsed = 0, 0.0
        existing = checkpoint_path(run_dir)
        if resume:
            state = distributed.from_main(lambda: read_checkpoint(run_dir))  # rank 0's disk
            check_resumable(state, config, learner.options, existing)
            load_learner_state(learner, state, existing)
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"])
            start, elapsed = state["step"], state["extra"].get("seconds", 0.0)
        elif distributed.from_main(existing.exists):
            raise FewSegError(f"{existing} exists: pass --resume to continue it, or another --out")
        distributed.broadcast_module(learner)
        main = distributed.is_main()  # only rank 0 writes files
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_yaml(run_dir / "config.yaml", config, options)
        log = MetricsLog(run_dir, start, enabled=main)

        summary: dict[str, Any] = {"start_step": start, "validation": {}}
        bar = tqdm(
            range(start, config.steps),
            initial=start,
            total=config.steps,
            desc=f"train {config.learner}",
            unit="step",
            disable=not progress or not main,
        )
        window: list[dict[str, float]] = []
        began = time.perf_counter()
        stop = StopRequest().install()  # Ctrl-C: save at the end of the step, then stop
        # frozen backbones: each un-augmented image encoded once for the whole run
        features = ExitStack()
        features.enter_context(attached(training_stores(learner)))
        try:
            for step in bar:
                episodes = training_batch(
                    source, classes.train, config, size, step, rank, world, pseudo_images
                )
                episodes = [e.to(device) for e in episodes]
                learner.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast(config.precision, device):
                    metrics = learner.meta_gradients(episodes)
                metrics = distributed.average_meta_gradients(learner.outer_parameters(), metrics)
                if not all(math.isfinite(v) for v in metrics.values()):
                    raise TrainingDiverged(
                        f"non-finite loss at step {step + 1} ({metrics}); the last good checkpoint "
                        f"is {existing} (step {last_saved_step(run_dir)})"
                    )
                optimizer.step()
                done = step + 1
                window.append(metrics)
                seconds = elapsed + time.perf_counter() - began
                bar.set_postfix(
                    loss=f"{metrics['loss']:.3f}",
                    eps=f"{config.meta_batch * (done - start) / max(seconds - elapsed, 1e-9):.1f}",
                )
                if done % config.log_every == 0 or done == config.steps:
                    means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                    log.write(
                        done,
                        {**{f"train/{k}": v for k, v in means.items()}, "time/seconds": seconds},
                    )
                    summary["train"] = means
                    window = []
                if (
                    config.val_every
                    and classes.validation
                    and (done % config.val_every == 0 or done == config.steps)
                ):
                    miou = validate(learner, source, classes.validation, config, size)
                    log.write(done, {"val/miou": miou})
                    summary["validation"][done] = miou
                stopping = stop.agreed()
                if done % config.checkpoint_every == 0 or done == config.steps or stopping:
                    if not all(bool(p.isfinite().all()) for p in learner.parameters()):
                        raise TrainingDiverged(
                            f"non-finite parameters at step {done}; the last good checkpoint "
                            f"is {existing} (step {last_saved_step(run_dir)})"
                        )
                    if main:
                        extra = {"seconds": seconds, "size": size}
                        save_checkpoint(run_dir, done, config, learner, optimizer, extra)
                if stopping and done < config.steps:
                    raise TrainingInterrupted(
                        f"checkpoint of step {done} saved to {existing}; continue with --resume"
                    )
        finally:
            features.close()
            stop.restore()
            log.close()
            bar.close()
        summary.update(
            steps=config.steps,
            seconds=elapsed + time.perf_counter() - began,
            train_classes=[source.class_name(c) for c in classes.train],
            validation_classes=[source.class_name(c) for c in classes.validation],
        )
        return summary


def last_saved_step(run_dir: Path) -> int | str:
    try:
        return read_checkpoint(run_dir)["step"]
    except FewSegError:
        return "none"


RESUME_MAY_CHANGE = {"steps", "device", "val_every", "checkpoint_every", "log_every"}
RESUME_MAY_CHANGE |= {"precision"}  # like the device: how the arithmetic runs
RESUME_MAY_CHANGE |= {"index_cache"}  # where a dataset's index is kept, not what it holds
RESUME_MAY_CHANGE |= {"backend", "dist_timeout"}  # a run resumes on any world size
# None: the dataset's own default, resolved and recorded at the start of the run
RESOLVED_AT_START = {"fold", "pseudo_ratio"}


def check_resumable(
    state: dict[str, Any], config: TrainConfig, options: LearnerOptions, path: Path
) -> None:
    """A resumed run must be the same run, and not yet at ``config.steps``."""
    check_same_run(state, config, options, path)
    if state["step"] >= config.steps:
        raise FewSegError(f"{path}: already at step {state['step']} >= --steps {config.steps}")


def check_same_run(
    state: dict[str, Any], config: TrainConfig, options: LearnerOptions, path: Path
) -> None:
    """Only a run's length and bookkeeping may differ from its checkpoint's. An option the
    checkpoint lacks was added to fewseg after it was written and counts as its default,
    the value that keeps the behaviour it had before (as when the learner is restored)."""
    changed = changed_options(state["train_config"], asdict(config), recorded_defaults(TrainConfig))
    unresolved = {k for k in RESOLVED_AT_START if getattr(config, k) is None}
    changed = [k for k in changed if k not in RESUME_MAY_CHANGE | unresolved]
    if state["learner_name"] != config.learner:
        changed.append("learner")
    else:
        learner_changes = changed_options(saved_options(state), as_dict(options), {})
        changed += [f"learner option {k}" for k in learner_changes]
    if changed:
        raise FewSegError(f"{path}: cannot resume with different {', '.join(changed)}")
