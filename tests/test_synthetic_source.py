from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.data.synthetic import SHAPES, TEXTURES, SyntheticSource
from fewseg.errors import FewSegError

IMAGES_PER_CLASS = 3


@pytest.fixture(scope="module")
def source() -> SyntheticSource:
    return SyntheticSource(seed=0, images_per_class=IMAGES_PER_CLASS)


def classes_in(source: SyntheticSource, image_id: str) -> list[int]:
    return [c.index for c in source.classes() if image_id in source.images_of(c.index)]


def test_classes_are_many_unique_shape_texture_pairs(source: SyntheticSource) -> None:
    classes = source.classes()
    names = [c.name for c in classes]
    assert len(classes) >= 40
    assert len(set(names)) == len(names)
    assert [c.index for c in classes] == list(range(len(classes)))
    for name in names:
        texture, shape = name.split("-")
        assert texture in TEXTURES and shape in SHAPES


def test_every_fold_mixes_shapes_and_textures(source: SyntheticSource) -> None:
    for fold in "0123":
        split = source.fold_split(fold)
        names = [source.class_name(c).split("-") for c in split.test]
        assert len({shape for _, shape in names}) >= 4
        assert len({texture for texture, _ in names}) >= 4
        seen = {part for c in split.train for part in source.class_name(c).split("-")}
        assert {part for pair in names for part in pair} <= seen


def test_same_seed_gives_identical_data_and_other_seed_differs() -> None:
    a, b = SyntheticSource(seed=5, images_per_class=2), SyntheticSource(seed=5, images_per_class=2)
    other = SyntheticSource(seed=6, images_per_class=2)
    assert all(a.images_of(c) == b.images_of(c) for c in range(len(a.classes())))
    for image_id in ("00000", "00017", "00095"):
        for c in classes_in(a, image_id):
            sa, sb = a.load(image_id, c), b.load(image_id, c)
            assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.mask, sb.mask)
        assert not np.array_equal(a.load(image_id, 0).image, other.load(image_id, 0).image)


def test_pickled_source_renders_the_same(source: SyntheticSource) -> None:
    copy = pickle.loads(pickle.dumps(source))
    assert np.array_equal(copy.load("00007", 7).image, source.load("00007", 7).image)


def test_samples_have_the_documented_types(source: SyntheticSource) -> None:
    sample = source.load("00001", 1)
    size = SyntheticSource.default_size
    assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8
    assert sample.mask.shape == sample.ignore.shape == (size, size)
    assert sample.mask.dtype == sample.ignore.dtype == np.bool_
    assert not sample.ignore.any()
    assert sample.image.flags.writeable


@pytest.mark.parametrize("size", [64, SyntheticSource.default_size])
def test_masks_are_consistent_with_images_of(size: int) -> None:
    source = SyntheticSource(seed=size, images_per_class=IMAGES_PER_CLASS, size=size)
    n = len(source.classes())
    for i in range(source.n_images):
        image_id = f"{i:05d}"
        listed = classes_in(source, image_id)
        assert i % n in listed  # the primary object's class
        masks = {c: source.load(image_id, c).mask for c in range(n)}
        assert {c for c, mask in masks.items() if mask.any()} == set(listed)
        for c, d in itertools.combinations(listed, 2):
            assert not (masks[c] & masks[d]).any()


def test_images_hold_distractors_and_classes_have_enough_images(
    source: SyntheticSource,
) -> None:
    per_image = [len(classes_in(source, f"{i:05d}")) for i in range(source.n_images)]
    assert max(per_image) >= 2
    assert np.mean(per_image) > 2
    assert min(len(source.images_of(c.index)) for c in source.classes()) >= IMAGES_PER_CLASS
    default = SyntheticSource()
    assert min(len(default.images_of(c.index)) for c in default.classes()) >= 24


@pytest.mark.parametrize("threshold", [1, 400, 1000])
def test_min_mask_pixels_keeps_exactly_the_large_enough_masks(
    source: SyntheticSource, threshold: int
) -> None:
    filtered = SyntheticSource(seed=0, images_per_class=IMAGES_PER_CLASS, min_mask_pixels=threshold)
    dropped = 0
    for c in range(len(source.classes())):
        expected = [i for i in source.images_of(c) if source.load(i, c).mask.sum() >= threshold]
        assert list(filtered.images_of(c)) == expected
        dropped += len(source.images_of(c)) - len(expected)
    assert (dropped > 0) == (threshold > 1)


def test_solid_objects_are_flat_and_striped_objects_are_not(source: SyntheticSource) -> None:
    n = len(source.classes())
    spread: dict[str, list[float]] = {"solid": [], "striped": [], "background": []}
    for i in range(source.n_images):
        image_id, primary = f"{i:05d}", i % n
        texture = source.class_name(primary).split("-")[0]
        image = source.load(image_id, primary).image.astype(np.float64)
        foreground = np.zeros(image.shape[:2], dtype=bool)
        for c in classes_in(source, image_id):
            foreground |= source.load(image_id, c).mask
        spread["background"].append(image[~foreground].std(axis=0).mean())
        if texture in spread:
            mask = source.load(image_id, primary).mask
            spread[texture].append(image[mask].std(axis=0).mean())
    assert max(spread["solid"]) < 8
    assert np.median(spread["striped"]) > 3 * max(spread["solid"])
    assert np.median(spread["background"]) > 3 * max(spread["solid"])


def test_spec_factory_reads_options() -> None:
    options = SpecOptions("synthetic:seed=3,images=2,size=64", {"seed": "3", "images": "2"})
    options.values["size"] = "64"
    source = SOURCES.get("synthetic")(None, options, 0)
    assert options.values == {}
    assert source.settings() == {
        "kind": "synthetic",
        "min_mask_pixels": 0,
        "seed": 3,
        "images_per_class": 2,
        "size": 64,
        "classes": len(source.classes()),
    }
    assert source.load("00000", 0).image.shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("root", "values"),
    [("somewhere", {}), (None, {"images": "0"}), (None, {"size": "32"}), (None, {"seed": "-1"})],
)
def test_spec_factory_rejects_bad_options(root: str | None, values: dict[str, str]) -> None:
    with pytest.raises(FewSegError):
        SOURCES.get("synthetic")(root, SpecOptions("synthetic", dict(values)), 0)


def test_unknown_image_or_class_is_an_error(source: SyntheticSource) -> None:
    for image_id in ("99999", "abc", ""):
        with pytest.raises(FewSegError):
            source.load(image_id, 0)
    with pytest.raises(FewSegError):
        source.load("00000", len(source.classes()))


def test_default_fold_is_the_first_numbered_fold(source: SyntheticSource) -> None:
    assert source.default_fold == "0"
    assert source.fold_split(source.default_fold) == source.fold_split("0")
