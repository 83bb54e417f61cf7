"""COCO-20i PNG masks in HSNet's COCO2014 layout, with HSNet's fold lists or PFENet's lists."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewseg.data import imageio
from fewseg.data.coco20i import COCO_CLASSES, Coco20iSource
from fewseg.data.spec import open_source
from fewseg.errors import FewSegError

H, W = 4, 6
A, B, C = (f"COCO_val2014_00000000000{n}" for n in (1, 2, 3))

# 0 background, 1..80 = class index + 1 (1 person, 3 car, 80 toothbrush), 255 ignore
LABELS = {
    A: np.array(
        [[1, 1, 1, 0, 3, 3], [1, 1, 0, 0, 3, 0], [0, 0, 255, 255, 0, 0], [0, 0, 0, 0, 0, 0]],
        dtype=np.uint8,
    ),
    B: np.array(
        [[1, 1, 0, 0, 0, 0], [0, 0, 0, 80, 80, 0], [0, 0, 0, 80, 80, 0], [0, 0, 0, 0, 0, 0]],
        dtype=np.uint8,
    ),
    C: np.array(
        [[3, 3, 3, 0, 0, 0], [3, 3, 3, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
        dtype=np.uint8,
    ),
}
PERSON, CAR, TOOTHBRUSH = 0, 2, 79


def write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def write_mask(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels, mode="L").save(path)


@pytest.fixture
def coco2014(tmp_path: Path) -> Path:
    """HSNet's COCO2014 folder: val2014/*.jpg and annotations/val2014/*.png."""
    root = tmp_path / "COCO2014"
    for stem, labels in LABELS.items():
        write_jpeg(root / "val2014" / f"{stem}.jpg")
        write_mask(root / "annotations" / "val2014" / f"{stem}.png", labels)
    (root / "train2014").mkdir()
    (root / "annotations" / "train2014").mkdir()
    return root


def write_hsnet_folds(directory: Path, split: str, lists: dict[int, list[str]]) -> None:
    """``{trn,val}/fold{k}.pkl``: fold k holds the lists of classes k, k+4, ... (others
    empty), each name relative to COCO2014 — as HSNet ships them."""
    folder = directory / split
    folder.mkdir(parents=True)
    for k in range(4):
        fold = {c: (lists.get(c, []) if c % 4 == k else []) for c in range(80)}
        (folder / f"fold{k}.pkl").write_bytes(pickle.dumps(fold, protocol=2))


@pytest.fixture
def hsnet_splits(coco2014: Path) -> Path:
    """HSNet kept image A for person (not B), A and C for car, B for toothbrush."""
    splits = coco2014.parent / "splits" / "coco"
    names = {
        PERSON: [f"val2014/{A}.jpg"],
        CAR: [f"val2014/{A}.jpg", f"val2014/{C}.jpg"],
        TOOTHBRUSH: [f"val2014/{B}.jpg"],
    }
    write_hsnet_folds(splits, "val", names)
    return splits


def open_coco20i(spec: str, min_mask_pixels: int = 0) -> Coco20iSource:
    source = open_source(spec, min_mask_pixels)
    assert isinstance(source, Coco20iSource)
    return source


def test_classes_are_the_80_coco_categories(coco2014: Path) -> None:
    classes = open_coco20i(f"coco20i:{coco2014}").classes()
    assert len(classes) == 80
    assert (classes[0].name, classes[2].name, classes[79].name) == ("person", "car", "toothbrush")
    assert COCO_CLASSES.index("dining table") == 60


def test_scanned_masks_give_the_images_of_each_class(coco2014: Path) -> None:
    source = open_coco20i(f"coco20i:{coco2014}")
    assert source.images_of(PERSON) == (A, B)
    assert source.images_of(CAR) == (A, C)
    assert source.images_of(TOOTHBRUSH) == (B,)
    assert source.images_of(1) == ()


def test_min_mask_pixels_counts_label_pixels(coco2014: Path) -> None:
    source = open_coco20i(f"coco20i:{coco2014}", min_mask_pixels=4)
    assert source.images_of(PERSON) == (A,)  # 5 px; B has 2
    assert source.images_of(CAR) == (C,)  # A has 3, C 6
    assert source.images_of(TOOTHBRUSH) == (B,)  # 4 px


def test_load_gives_class_mask_and_ignore(coco2014: Path) -> None:
    source = open_coco20i(f"coco20i:{coco2014}")
    sample = source.load(A, CAR)
    expected = np.zeros((H, W), dtype=bool)
    expected[0, 4:6] = True
    expected[1, 4] = True
    np.testing.assert_array_equal(sample.mask, expected)
    ignore = np.zeros((H, W), dtype=bool)
    ignore[2, 2:4] = True
    np.testing.assert_array_equal(sample.ignore, ignore)
    assert sample.image.shape == (H, W, 3)
    mask, ignored = source.load_masks(A, CAR)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(ignored, ignore)


def test_hsnet_fold_lists_decide_the_images(coco2014: Path, hsnet_splits: Path) -> None:
    source = open_coco20i(f"coco20i:{coco2014},splits={hsnet_splits}")
    assert source.images_of(PERSON) == (A,)  # HSNet's list leaves B out
    assert source.images_of(CAR) == (A, C)
    assert source.images_of(TOOTHBRUSH) == (B,)
    assert source.load(C, CAR).mask.sum() == 6
    assert source.settings()["splits"] == str(hsnet_splits)


def test_hsnet_fold_lists_need_no_mask_until_loading(
    coco2014: Path, hsnet_splits: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(path: object) -> None:
        raise AssertionError(f"read {path}")

    source = open_coco20i(f"coco20i:{coco2014},splits={hsnet_splits}")
    monkeypatch.setattr(imageio, "read_label_map", fail)
    monkeypatch.setattr("fewseg.data.coco20i.read_label_map", fail)
    assert source.images_of(CAR) == (A, C)


def test_hsnet_fold_lists_with_exact_counts(coco2014: Path, hsnet_splits: Path) -> None:
    source = open_coco20i(f"coco20i:{coco2014},splits={hsnet_splits}", min_mask_pixels=4)
    assert source.images_of(PERSON) == (A,)
    assert source.images_of(CAR) == (C,)
    assert source.images_of(TOOTHBRUSH) == (B,)


def test_hsnet_train_split_reads_trn_folds(coco2014: Path) -> None:
    write_jpeg(coco2014 / "train2014" / "COCO_train2014_000000000009.jpg")
    write_mask(
        coco2014 / "annotations" / "train2014" / "COCO_train2014_000000000009.png", LABELS[C]
    )
    splits = coco2014 / "splits"
    write_hsnet_folds(splits, "trn", {CAR: ["train2014/COCO_train2014_000000000009.jpg"]})
    source = open_coco20i(f"coco20i:{coco2014},split=train,splits=splits")
    assert source.images_of(CAR) == ("COCO_train2014_000000000009",)
    assert source.load("COCO_train2014_000000000009", CAR).mask.sum() == 6


def test_pickle_that_asks_for_code_is_refused(coco2014: Path, hsnet_splits: Path) -> None:
    path = hsnet_splits / "val" / "fold2.pkl"
    path.write_bytes(pickle.dumps({2: [Path("val2014/x.jpg")]}))
    with pytest.raises(FewSegError, match=r"fold2\.pkl: not an HSNet split file \(refers to"):
        open_coco20i(f"coco20i:{coco2014},splits={hsnet_splits}")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (pickle.dumps([1, 2]), "expected a dict"),
        (pickle.dumps({80: []}), "expected a dict"),
        (pickle.dumps({0: "val2014/x.jpg"}), "expected a dict"),
        (b"not a pickle", "not an HSNet split file"),
    ],
)
def test_malformed_fold_file(
    coco2014: Path, hsnet_splits: Path, content: bytes, reason: str
) -> None:
    path = hsnet_splits / "val" / "fold1.pkl"
    path.write_bytes(content)
    with pytest.raises(FewSegError, match=reason) as info:
        open_coco20i(f"coco20i:{coco2014},splits={hsnet_splits}")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_fold_file(coco2014: Path, hsnet_splits: Path) -> None:
    (hsnet_splits / "val" / "fold3.pkl").unlink()
    with pytest.raises(FewSegError, match=r"val/fold3\.pkl: no such split file"):
        open_coco20i(f"coco20i:{coco2014},splits={hsnet_splits}")
    with pytest.raises(FewSegError, match=r"splits/coco/trn: no such directory"):
        open_coco20i(f"coco20i:{coco2014},split=train,splits={hsnet_splits}")


def test_pfenet_list(coco2014: Path) -> None:
    """PFENet / RePRI: 'val2014/<stem>.jpg val/<stem>.png' relative to the data root."""
    for stem in (A, C):
        write_mask(coco2014 / "val" / f"{stem}.png", LABELS[stem])
    (coco2014 / "lists").mkdir()
    (coco2014 / "lists" / "val.txt").write_text(
        f"val2014/{A}.jpg val/{A}.png\n\nval2014/{C}.jpg val/{C}.png\nval2014/{A}.jpg val/{A}.png\n"
    )
    source = open_coco20i(f"coco20i:{coco2014},list=lists/val.txt")
    assert source.images_of(PERSON) == (A,)
    assert source.images_of(CAR) == (A, C)
    assert source.images_of(TOOTHBRUSH) == ()
    assert source.load(A, PERSON).mask.sum() == 5


def test_pfenet_list_errors(coco2014: Path) -> None:
    (coco2014 / "bad.txt").write_text(f"val2014/{A}.jpg\n")
    with pytest.raises(FewSegError, match=r"bad\.txt:1: expected 'image mask'"):
        open_coco20i(f"coco20i:{coco2014},list=bad.txt")
    (coco2014 / "two.txt").write_text(f"val2014/{A}.jpg a/{A}.png\nval2014/{A}.jpg b/{A}.png\n")
    with pytest.raises(FewSegError, match=r"two\.txt:2: a second pair for image"):
        open_coco20i(f"coco20i:{coco2014},list=two.txt")
    with pytest.raises(FewSegError, match=r"nope\.txt: no such image list"):
        open_coco20i(f"coco20i:{coco2014},list=nope.txt")


def test_label_outside_coco_is_named(coco2014: Path) -> None:
    labels = LABELS[B].copy()
    labels[3, 0] = 90
    path = coco2014 / "annotations" / "val2014" / f"{B}.png"
    write_mask(path, labels)
    with pytest.raises(FewSegError, match=re.escape(f"{path}: label value 90 is not a COCO-20i")):
        open_coco20i(f"coco20i:{coco2014}").images_of(0)


def test_missing_image_and_unknown_ids(coco2014: Path) -> None:
    (coco2014 / "val2014" / f"{C}.jpg").unlink()
    source = open_coco20i(f"coco20i:{coco2014}")
    with pytest.raises(FewSegError, match=re.escape(f"{coco2014 / 'val2014' / C}.jpg: no such")):
        source.images_of(CAR)
    with pytest.raises(FewSegError, match="unknown image 'nope'"):
        source.load("nope", 0)
    with pytest.raises(FewSegError, match=r"class index 80 is not in 0\.\.79"):
        source.load(A, 80)


def test_folds_and_default_fold(coco2014: Path) -> None:
    source = open_coco20i(f"coco20i:{coco2014}")
    assert source.default_fold == "0"
    assert source.fold_split("1").test == tuple(range(1, 80, 4))
    consecutive = open_coco20i(f"coco20i:{coco2014},folds=consecutive")
    assert consecutive.fold_split("1").test == tuple(range(20, 40))
    assert source.fold_split("all").test == tuple(range(80))


def test_spec_errors(coco2014: Path, hsnet_splits: Path) -> None:
    with pytest.raises(FewSegError, match="needs the COCO2014 directory"):
        open_source("coco20i")
    with pytest.raises(FewSegError, match="give list= or splits=, not both"):
        open_source(f"coco20i:{coco2014},list=a.txt,splits={hsnet_splits}")
    with pytest.raises(FewSegError, match="images= and masks= apply only without"):
        open_source(f"coco20i:{coco2014},splits={hsnet_splits},images=val2014")
    with pytest.raises(FewSegError, match="split=test"):
        open_source(f"coco20i:{coco2014},split=test")
    with pytest.raises(FewSegError, match=re.escape(f"{coco2014 / 'annotations' / 'train2014'}")):
        open_source(f"coco20i:{coco2014},split=train")
    with pytest.raises(FewSegError, match="unknown option"):
        open_source(f"coco20i:{coco2014},colour=red")


def test_custom_image_and_mask_folders(coco2014: Path) -> None:
    (coco2014 / "val2014").rename(coco2014 / "images")
    (coco2014 / "annotations" / "val2014").rename(coco2014 / "labels")
    source = open_coco20i(f"coco20i:{coco2014},images=images,masks=labels")
    assert source.images_of(TOOTHBRUSH) == (B,)
    assert source.settings()["masks"] == str(coco2014 / "labels")
