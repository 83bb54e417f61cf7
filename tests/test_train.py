"""Meta-training engine: config resolution, checkpoints, exact resume, end to end per learner."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_training import TINY_TRAINING, tiny_values

from fewseg.cli import main
from fewseg.engine.checkpoint import read_checkpoint, restore_learner, save_checkpoint
from fewseg.engine.config import TrainConfig, read_yaml, resolve_config
from fewseg.engine.train import hold_out_classes, train, training_batch
from fewseg.errors import FewSegError
from fewseg.learners.base import LearnerOptions

DATASET = TINY_TRAINING["dataset"]


def tiny_config(learner: str = "maml", **overrides: object) -> tuple[TrainConfig, LearnerOptions]:
    values = tiny_values(learner, **{"log_every": 1, "checkpoint_every": 5, **overrides})
    return resolve_config(values, {})


def test_flags_override_yaml_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("learner: reptile\nsteps: 7\ninner-lr: 0.25\nshots: 5\n")
    config, learner = resolve_config(read_yaml(path), {"steps": 9, "shots": None})
    assert (config.learner, config.steps, config.shots) == ("reptile", 9, 5)
    assert learner.inner_lr == 0.25
    assert config.meta_batch == TrainConfig().meta_batch


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz: 3\n", "unknown option(s) of maml: stepz"),
        ("learner: protonet\ninner_lr: 0.3\n", "unknown option(s) of protonet: inner_lr"),
        ("steps: three\n", "steps must be int"),
        ("steps: [1\n", "not valid YAML"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_config_file_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FewSegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_config(read_yaml(path), {}, str(path))


def test_validation_classes_are_held_out_of_training() -> None:
    plan = hold_out_classes(list(range(20)), 0.1)
    assert plan.validation == (9, 19)
    assert not set(plan.validation) & set(plan.train)
    assert sorted(plan.train + plan.validation) == list(range(20))


def test_training_batch_depends_only_on_seed_and_step() -> None:
    from fewseg.data.spec import open_source

    source = open_source(DATASET)
    config, _ = tiny_config()
    classes = source.fold_split("0").train
    first = training_batch(source, classes, config, 64, step=3)
    torch.rand(5)  # global RNG use in between must not matter
    again = training_batch(source, classes, config, 64, step=3)
    other = training_batch(source, classes, config, 64, step=4)
    assert all(
        torch.equal(a.query.images, b.query.images) for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(first[0].query.images, other[0].query.images)


def test_mixed_shot_tasks_draw_their_shots_in_the_range_repeatably() -> None:
    from dataclasses import replace

    from fewseg.data.spec import open_source

    source = open_source(DATASET)
    config, _ = tiny_config()
    config = replace(config, shots=2, max_shots=4, meta_batch=8)
    classes = source.fold_split("0").train
    shots = [
        [t.support.shots for t in training_batch(source, classes, config, 64, s)] for s in range(6)
    ]
    drawn = {k for step in shots for k in step}
    assert drawn == {2, 3, 4}
    again = [t.support.shots for t in training_batch(source, classes, config, 64, 0)]
    assert again == shots[0]
    fixed = replace(config, max_shots=None)
    assert all(t.support.shots == 2 for t in training_batch(source, classes, fixed, 64, 0))


def test_max_shots_below_shots_is_refused() -> None:
    with pytest.raises(FewSegError, match="max_shots must be >= shots"):
        resolve_config({"shots": 3, "max_shots": 2}, {})


@pytest.mark.parametrize("learner", ["maml", "fomaml", "reptile", "protonet"])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, learner: str) -> None:
    config, options = tiny_config(learner=learner, steps=10)
    train(config, options, tmp_path / "straight", progress=False)
    half, _ = tiny_config(learner=learner, steps=5)
    train(half, options, tmp_path / "resumed", progress=False)
    train(config, options, tmp_path / "resumed", resume=True, progress=False)
    straight = read_checkpoint(tmp_path / "straight")
    resumed = read_checkpoint(tmp_path / "resumed")
    assert resumed["step"] == straight["step"] == 10
    for name, tensor in straight["learner"].items():
        assert torch.equal(tensor, resumed["learner"][name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed/metrics.jsonl").open()]
    assert steps == list(range(1, 11))


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    config, options = tiny_config(steps=2)
    train(config, options, tmp_path, progress=False)
    longer, _ = tiny_config(steps=4, shots=2)
    with pytest.raises(FewSegError, match="cannot resume with different shots"):
        train(longer, options, tmp_path, resume=True, progress=False)
    with pytest.raises(FewSegError, match="exists: pass --resume"):
        train(config, options, tmp_path, progress=False)


def test_resume_names_the_changed_learner_option(tmp_path: Path) -> None:
    config, options = tiny_config(steps=2)
    train(config, options, tmp_path, progress=False)
    longer, _ = tiny_config(steps=4)
    _, wider = tiny_config(hidden=2 * options.hidden)
    with pytest.raises(
        FewSegError, match=r"checkpoint\.pt: cannot resume with different learner option hidden$"
    ):
        train(longer, wider, tmp_path, resume=True, progress=False)


def test_resumes_a_checkpoint_written_before_an_option_existed(tmp_path: Path) -> None:
    """Options added to fewseg after a checkpoint was written count as their defaults."""
    config, options = tiny_config(steps=2)
    train(config, options, tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["learner_options"]["loss_size"], state["train_config"]["min_mask_pixels"]
    torch.save(state, path)
    longer, _ = tiny_config(steps=3)
    train(longer, options, tmp_path, resume=True, progress=False)
    assert read_checkpoint(tmp_path)["step"] == 3
    state = torch.load(path, weights_only=False)
    del state["learner_options"]["loss_size"]
    torch.save(state, path)
    _, other = tiny_config(loss_size=options.loss_size + 8)
    with pytest.raises(FewSegError, match="cannot resume with different learner option loss_size"):
        train(tiny_config(steps=4)[0], other, tmp_path, resume=True, progress=False)


def test_checkpoint_is_safe_and_errors_are_one_line(tmp_path: Path) -> None:
    config, options = tiny_config(steps=1)
    train(config, options, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))  # no temp file left
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FewSegError, match="corrupt or unsafe checkpoint"):
        read_checkpoint(corrupt)
    state = read_checkpoint(tmp_path / "run")
    state["learner_options"]["hidden"] = 16
    with pytest.raises(FewSegError, match="another architecture"):
        restore_learner(state, path)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewseg.learners.finetune import FineTune

    calls = []
    original = FineTune.meta_gradients

    def diverging(self: FineTune, episodes: list) -> dict[str, float]:
        calls.append(1)
        metrics = original(self, episodes)
        return {**metrics, "loss": float("nan")} if len(calls) == 4 else metrics

    monkeypatch.setattr(FineTune, "meta_gradients", diverging)
    config, options = tiny_config(learner="finetune", steps=6, checkpoint_every=2)
    with pytest.raises(FewSegError, match=r"non-finite loss at step 4.*step 2"):
        train(config, options, tmp_path, progress=False)
    assert read_checkpoint(tmp_path)["step"] == 2


def test_non_finite_parameters_are_never_checkpointed(tmp_path: Path) -> None:
    config, options = tiny_config(learner="finetune", steps=3, checkpoint_every=1)
    options.outer_lr = float("inf")
    with pytest.raises(FewSegError, match="non-finite parameters at step 1"):
        train(config, options, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("learner", ["maml", "fomaml", "reptile", "protonet", "finetune"])
def test_train_then_evaluate_every_learner(
    tmp_path: Path, learner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    flags = [
        "train", "--learner", learner, "--dataset", DATASET, "--backbone", "convnet",
        "--hidden", "8", "--meta-batch", "2", "--steps", "2",
        "--val-every", "2", "--val-episodes", "4", "--out", str(run), "--no-progress",
    ]  # fmt: skip
    if learner != "protonet":
        flags += ["--inner-steps", "1"]
    assert main(flags) == 0
    assert (run / "config.yaml").is_file() and (run / "tensorboard").is_dir()
    assert read_yaml(run / "config.yaml")["learner"] == learner
    out = tmp_path / "eval"
    args = [
        "evaluate", "--checkpoint", str(run), "--dataset", DATASET, "--fold", "0",
        "--shots", "1", "--episodes", "6", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["trained"]["step"] == 2
    assert 0.0 <= report["miou"] <= 100.0
    assert report["settings"]["learner"]["learner"] == learner
    capsys.readouterr()


def test_evaluate_numbers_equal_after_resume(tmp_path: Path) -> None:
    def evaluate(run: Path, out: Path) -> dict:
        args = [
            "evaluate", "--checkpoint", str(run), "--dataset", DATASET, "--episodes", "8",
            "--out", str(out), "--no-progress",
        ]  # fmt: skip
        assert main(args) == 0
        return json.loads((out / "report.json").read_text())

    config, options = tiny_config(learner="maml", steps=4)
    train(config, options, tmp_path / "a", progress=False)
    half, _ = tiny_config(learner="maml", steps=2)
    train(half, options, tmp_path / "b", progress=False)
    train(config, options, tmp_path / "b", resume=True, progress=False)
    first, second = (
        evaluate(tmp_path / "a", tmp_path / "ea"),
        evaluate(tmp_path / "b", tmp_path / "eb"),
    )
    assert (first["miou"], first["fbiou"], first["per_class"]) == (
        second["miou"], second["fbiou"], second["per_class"],
    )  # fmt: skip


def test_training_free_learner_cannot_be_trained(tmp_path: Path) -> None:
    config, options = tiny_config(learner="baseline", steps=1)
    with pytest.raises(FewSegError, match="training-free"):
        train(config, options, tmp_path, progress=False)


def test_save_checkpoint_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, options = tiny_config(steps=1)
    train(config, options, tmp_path, progress=False)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    state = read_checkpoint(tmp_path)
    learner = restore_learner(state, tmp_path)

    def failing_save(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, config, learner, learner.make_optimizer())
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert not list(tmp_path.glob(".checkpoint.pt.*"))


def test_shipped_training_config_resolves() -> None:
    path = Path(__file__).resolve().parents[1] / "configs/maml-coco.yaml"
    config, options = resolve_config(read_yaml(path), {"steps": 10}, str(path))
    assert (config.learner, config.fold, config.steps, config.size) == ("maml", "0", 10, 400)
    assert options.backbone == "mobilenet_v2" and options.inner_lr == 0.5


@pytest.mark.parametrize("augment", [True, False])
def test_un_augmented_training_encodes_each_image_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, augment: bool
) -> None:
    """A frozen backbone's features of an image met again come from the engine's store;
    augmented images are all new, and all encoded."""
    from fewseg.data.spec import open_source
    from fewseg.episodes.image_keys import image_keys
    from fewseg.models.backbones import Backbone

    encoded: list[int] = []
    compute = Backbone.compute

    def counting(self: Backbone, images: torch.Tensor) -> object:
        encoded.append(len(images))
        return compute(self, images)

    monkeypatch.setattr(Backbone, "compute", counting)
    config, options = tiny_config(
        learner="protonet", steps=6, augment=augment, backbone="mobilenet_v2_s8", hidden=8,
        dataset="synthetic:images=6,size=64", shots=2,
    )  # fmt: skip
    train(config, options, tmp_path / "run", progress=False)
    source = open_source(config.dataset)
    classes = hold_out_classes(source.fold_split("0").train, config.val_fraction).train
    plain = replace(config, augment=False)
    names = [
        key
        for step in range(config.steps)
        for task in training_batch(source, classes, plain, 64, step)
        for key in image_keys(task.labelled_images().images)
    ]
    assert len(set(names)) < len(names)  # images met again
    assert sum(encoded) == (len(names) if augment else len(set(names)))
