"""Self-supervised episodes from unlabelled images: the ``unlabeled`` reader, superpixel
pseudo-classes, and meta-training on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewseg.cli import main
from fewseg.data.spec import open_source
from fewseg.engine.config import resolve_config
from fewseg.engine.train import training_batch
from fewseg.episodes.image_keys import image_keys
from fewseg.episodes.pseudo import (
    PSEUDO_CLASS,
    SuperpixelSettings,
    draw_pseudo_episode,
    pick_region,
    superpixels,
)
from fewseg.errors import FewSegError


def blocks_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """Four flat colour quadrants with mild noise: four obvious regions."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    half = size // 2
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    for k, (r, c) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
        image[r : r + half, c : c + half] = colours[k]
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(blocks_image(seed=i)).save(root / f"{i}.png")
    Image.fromarray(blocks_image(seed=9)).save(root / "sub" / "deep.jpg")
    (root / ".hidden.png").write_bytes(b"not read")
    (root / "notes.txt").write_text("not an image")
    return root


def test_an_unlabeled_folder_lists_its_images_and_has_no_classes(photos: Path) -> None:
    source = open_source(f"unlabeled:{photos}")
    assert source.image_ids() == ("0.png", "1.png", "2.png", "sub/deep.jpg")
    assert source.classes() == () and source.default_fold == "all"
    assert source.load_image("sub/deep.jpg").shape == (64, 64, 3)
    with pytest.raises(FewSegError, match="has no labelled classes"):
        source.load("0.png", 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "no such directory"),
        (lambda root: root.mkdir(), "no images"),
        (
            lambda root: (root.mkdir(), (root / "x.png").write_bytes(b"garbage")),
            "x.png: cannot read",
        ),
        (
            lambda root: (root.mkdir(), Image.fromarray(blocks_image(8)).save(root / "t.png")),
            "t.png: image is 8x8, smaller than 16 pixels",
        ),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(FewSegError, match=message):
        open_source(f"unlabeled:{root}")


def test_superpixels_find_the_regions_and_a_pseudo_class_has_an_allowed_area() -> None:
    image = blocks_image(64)
    labels = superpixels(image, "felzenszwalb")
    quadrants = [labels[:32, :32], labels[:32, 32:], labels[32:, :32], labels[32:, 32:]]
    assert len({int(np.bincount(q.ravel()).argmax()) for q in quadrants}) == 4
    settings = SuperpixelSettings(min_area=0.2, max_area=0.3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        region = pick_region(labels, settings, rng)
        assert region is not None and 0.2 <= region.mean() <= 0.3
    assert pick_region(labels, SuperpixelSettings(min_area=0.5, max_area=0.6), rng) is None
    assert superpixels(image, "slic").max() >= 3


def test_a_pseudo_episode_is_two_augmentations_of_one_region_and_repeatable(photos: Path) -> None:
    source = open_source(f"unlabeled:{photos}")
    ids = source.image_ids()
    first = draw_pseudo_episode(source, ids, 2, 48, np.random.default_rng(7))
    again = draw_pseudo_episode(source, ids, 2, 48, np.random.default_rng(7))
    other = draw_pseudo_episode(source, ids, 2, 48, np.random.default_rng(8))
    assert first.class_index == PSEUDO_CLASS
    assert first.support.images.shape == (2, 3, 48, 48) and first.query.masks.shape == (1, 48, 48)
    assert all(bool(m.any()) for m in (*first.support.masks, *first.query.masks))
    assert torch.equal(first.query.images, again.query.images)
    assert torch.equal(first.support.masks, again.support.masks)
    assert not torch.equal(first.query.images, other.query.images)
    assert not torch.equal(first.support.images[0], first.query.images[0])  # views differ
    assert image_keys(first.query.images) is None  # augmented: never met again


def test_pseudo_ratio_mixes_tasks_repeatably_and_zero_changes_nothing() -> None:
    source = open_source("synthetic:images=4,size=64")
    classes = source.fold_split("0").train
    images = source.pseudo_image_ids("0")
    assert set(images) == {i for c in classes for i in source.images_of(c)}
    plain, _ = resolve_config({"meta_batch": 8, "augment": False}, {})
    mixed, _ = resolve_config({"meta_batch": 8, "augment": False, "pseudo_ratio": 0.5}, {})
    before = training_batch(source, classes, plain, 64, 3)
    zero = training_batch(source, classes, plain, 64, 3, pseudo_images=images)
    assert all(
        torch.equal(a.query.images, b.query.images) for a, b in zip(before, zero, strict=True)
    )
    batch = training_batch(source, classes, mixed, 64, 3, pseudo_images=images)
    again = training_batch(source, classes, mixed, 64, 3, pseudo_images=images)
    kinds = [t.class_index == PSEUDO_CLASS for t in batch]
    assert any(kinds) and not all(kinds)
    assert all(torch.equal(a.query.masks, b.query.masks) for a, b in zip(batch, again, strict=True))


def test_meta_training_on_a_folder_of_unlabeled_images(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = [
        "train", "--learner", "protonet", "--dataset", f"unlabeled:{photos}", "--backbone",
        "convnet", "--hidden", "8", "--steps", "2", "--meta-batch", "2", "--size", "48",
        "--out", str(run), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    from fewseg.engine.checkpoint import read_checkpoint

    state = read_checkpoint(run)
    assert state["step"] == 2 and state["train_config"]["pseudo_ratio"] == 1.0
    assert state["train_config"]["fold"] == "all"
