from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewseg.data.pascal import VOC_CLASSES, PascalSource
from fewseg.data.spec import SOURCES, parse_spec
from fewseg.errors import FewSegError

H, W = 4, 6

# Labels per image: 0 background, VOC ids 1..20, 255 boundary.
LABELS = {
    "2007_000001": np.array(
        [
            [0, 0, 1, 1, 255, 0],
            [0, 1, 1, 1, 255, 0],
            [0, 0, 255, 255, 12, 12],
            [0, 0, 0, 0, 12, 12],
        ],
        dtype=np.uint8,
    ),
    "2007_000002": np.array(
        [
            [11, 11, 255, 15, 15, 15],
            [11, 11, 255, 15, 15, 15],
            [0, 0, 255, 15, 15, 15],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    ),
    "2007_000003": np.array(
        [
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 20, 20, 0],
            [0, 0, 0, 20, 20, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    ),
}


def voc_palette() -> list[int]:
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def write_jpeg(path: Path, height: int = H, width: int = W) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for stem, labels in LABELS.items():
        write_jpeg(root / "JPEGImages" / f"{stem}.jpg")
        write_palette_png(root / "SegmentationClass" / f"{stem}.png", labels)
        Image.fromarray(labels, mode="L").save(root / "SegmentationClassAug" / f"{stem}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(
        "2007_000001\n2007_000002\n2007_000003\n"
    )
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    return root


def index(name: str) -> int:
    return VOC_CLASSES.index(name)


def test_palette_fixture_is_palette_mode(voc: Path) -> None:
    with Image.open(voc / "SegmentationClass" / "2007_000001.png") as image:
        assert image.mode == "P"


def test_classes_are_the_twenty_voc_classes(voc: Path) -> None:
    classes = PascalSource(voc).classes()
    assert [c.index for c in classes] == list(range(20))
    assert classes[0].name == "aeroplane"
    assert classes[11].name == "dog"
    assert classes[19].name == "tvmonitor"


def test_images_of_each_class(voc: Path) -> None:
    source = PascalSource(voc)
    assert source.images_of(index("aeroplane")) == ("2007_000001", "2007_000003")
    assert source.images_of(index("diningtable")) == ("2007_000002",)
    assert source.images_of(index("dog")) == ("2007_000001",)
    assert source.images_of(index("person")) == ("2007_000002",)
    assert source.images_of(index("tvmonitor")) == ("2007_000003",)
    assert source.images_of(index("cat")) == ()


def test_exact_pixel_counts(voc: Path) -> None:
    counts = PascalSource(voc)._class_pixel_counts()
    assert counts[index("aeroplane")] == {"2007_000001": 5, "2007_000003": 1}
    assert counts[index("person")] == {"2007_000002": 9}
    assert counts[index("dog")] == {"2007_000001": 4}


def test_min_mask_pixels_drops_small_masks(voc: Path) -> None:
    source = PascalSource(voc, min_mask_pixels=4)
    assert source.images_of(index("aeroplane")) == ("2007_000001",)
    assert source.images_of(index("dog")) == ("2007_000001",)
    assert PascalSource(voc, min_mask_pixels=5).images_of(index("dog")) == ()


def test_load_gives_class_mask_and_boundary_ignore(voc: Path) -> None:
    sample = PascalSource(voc).load("2007_000001", index("aeroplane"))
    labels = LABELS["2007_000001"]
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, labels == 1)
    np.testing.assert_array_equal(sample.ignore, labels == 255)
    assert sample.mask.sum() == 5
    assert sample.ignore.sum() == 4


def test_load_other_class_of_same_image(voc: Path) -> None:
    sample = PascalSource(voc).load("2007_000001", index("dog"))
    expected = np.zeros((H, W), dtype=bool)
    expected[2:, 4:] = True
    np.testing.assert_array_equal(sample.mask, expected)


def test_pascal_5i_folds(voc: Path) -> None:
    source = PascalSource(voc)
    fold2 = source.fold_split("2")
    assert fold2.convention == "pascal-5i"
    assert [source.class_name(c) for c in fold2.test] == [
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
    ]
    assert fold2.train == tuple(c for c in range(20) if c not in range(10, 15))
    assert source.fold_split("0").test == (0, 1, 2, 3, 4)
    assert source.fold_split("3").test == (15, 16, 17, 18, 19)
    everything = source.fold_split("all")
    assert everything.test == tuple(range(20))
    assert everything.train == ()
    with pytest.raises(FewSegError, match="unknown fold '4'"):
        source.fold_split("4")


def open_spec(spec: str, min_mask_pixels: int = 0) -> PascalSource:
    kind, root, options = parse_spec(spec)
    source = SOURCES.get(kind)(root, options, min_mask_pixels)
    options.reject_rest()
    assert isinstance(source, PascalSource)
    return source


def test_spec_defaults(voc: Path) -> None:
    source = open_spec(f"pascal:{voc}", min_mask_pixels=3)
    settings = source.settings()
    assert settings["kind"] == "pascal"
    assert settings["root"] == str(voc)
    assert settings["split"] == "val"
    assert settings["masks"] == "SegmentationClass"
    assert settings["list"] == str(voc / "ImageSets" / "Segmentation" / "val.txt")
    assert settings["min_mask_pixels"] == 3
    assert source.image_ids == ("2007_000001", "2007_000002", "2007_000003")


def test_spec_train_split_reads_train_list(voc: Path) -> None:
    source = open_spec(f"pascal:{voc},split=train")
    assert source.image_ids == ("2007_000001",)
    assert source.images_of(index("person")) == ()


def test_spec_rejects_bad_options(voc: Path) -> None:
    with pytest.raises(FewSegError, match="split='test'"):
        open_spec(f"pascal:{voc},split=test")
    with pytest.raises(FewSegError, match="masks='Seg'"):
        open_spec(f"pascal:{voc},masks=Seg")
    with pytest.raises(FewSegError, match="unknown option"):
        open_spec(f"pascal:{voc},fold=1")
    with pytest.raises(FewSegError, match="pascal:ROOT"):
        open_spec("pascal")


def test_sbd_train_aug_list_and_grayscale_masks(voc: Path) -> None:
    aug_dir = voc / "ImageSets" / "SegmentationAug"
    aug_dir.mkdir()
    (aug_dir / "train_aug.txt").write_text(
        "/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n"
        "/JPEGImages/2007_000003.jpg /SegmentationClassAug/2007_000003.png\n"
    )
    source = open_spec(f"pascal:{voc},split=train,masks=SegmentationClassAug")
    assert source.list_file == aug_dir / "train_aug.txt"
    assert source.image_ids == ("2007_000002", "2007_000003")
    assert source.images_of(index("aeroplane")) == ("2007_000003",)
    assert source.images_of(index("dog")) == ()
    sample = source.load("2007_000002", index("diningtable"))
    np.testing.assert_array_equal(sample.mask, LABELS["2007_000002"] == 11)
    np.testing.assert_array_equal(sample.ignore, LABELS["2007_000002"] == 255)


def test_aug_train_falls_back_to_voc_train_list(voc: Path) -> None:
    source = open_spec(f"pascal:{voc},split=train,masks=SegmentationClassAug")
    assert source.list_file == voc / "ImageSets" / "Segmentation" / "train.txt"
    assert source.image_ids == ("2007_000001",)


def test_explicit_list_is_relative_to_root(voc: Path) -> None:
    (voc / "mine.txt").write_text("2007_000003\n\n2007_000003\n")
    source = open_spec(f"pascal:{voc},list=mine.txt")
    assert source.image_ids == ("2007_000003",)
    assert source.images_of(index("tvmonitor")) == ("2007_000003",)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FewSegError, match="nowhere: no such directory"):
        PascalSource(tmp_path / "nowhere")


@pytest.mark.parametrize("sub", ["JPEGImages", "SegmentationClass"])
def test_missing_directory(voc: Path, sub: str) -> None:
    (voc / sub).rename(voc / f"{sub}.moved")
    with pytest.raises(FewSegError, match=f"{sub}: no such directory"):
        PascalSource(voc)


def test_missing_list(voc: Path) -> None:
    with pytest.raises(FewSegError, match=r"nope\.txt: no such image list"):
        PascalSource(voc, list_file="nope.txt")


def test_malformed_list_line(voc: Path) -> None:
    (voc / "bad.txt").write_text("a b c\n")
    with pytest.raises(FewSegError, match=r"bad\.txt:1: expected"):
        PascalSource(voc, list_file="bad.txt")


def test_missing_mask(voc: Path) -> None:
    (voc / "SegmentationClass" / "2007_000002.png").unlink()
    source = PascalSource(voc)
    with pytest.raises(FewSegError, match=r"2007_000002\.png: no such file"):
        source.images_of(0)


def test_missing_image(voc: Path) -> None:
    (voc / "JPEGImages" / "2007_000003.jpg").unlink()
    with pytest.raises(FewSegError, match=r"2007_000003\.jpg: no such file"):
        PascalSource(voc).images_of(0)


def test_corrupt_image(voc: Path) -> None:
    (voc / "JPEGImages" / "2007_000001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(FewSegError, match=r"2007_000001\.jpg: cannot read image"):
        PascalSource(voc).load("2007_000001", 0)


def test_mask_image_size_mismatch(voc: Path) -> None:
    write_jpeg(voc / "JPEGImages" / "2007_000001.jpg", height=H + 1, width=W)
    with pytest.raises(FewSegError, match=r"2007_000001\.png: mask is 6x4 but its image is 6x5"):
        PascalSource(voc).load("2007_000001", 0)


def test_out_of_range_label(voc: Path) -> None:
    labels = LABELS["2007_000003"].copy()
    labels[3, 5] = 21
    write_palette_png(voc / "SegmentationClass" / "2007_000003.png", labels)
    with pytest.raises(FewSegError, match=r"2007_000003\.png: label value 21 is not a VOC label"):
        PascalSource(voc).images_of(0)


def test_load_rejects_unknown_image_and_class(voc: Path) -> None:
    source = PascalSource(voc)
    with pytest.raises(FewSegError, match="'2008_000009' is not in"):
        source.load("2008_000009", 0)
    with pytest.raises(FewSegError, match="class index 20"):
        source.load("2007_000001", 20)


def write_hsnet_folds(directory: Path, split: str, lines: dict[int, list[str]]) -> None:
    """HSNet's data/splits/pascal/{trn,val}/fold{k}.txt: '<stem>__<VOC label, 2 digits>'."""
    (directory / split).mkdir(parents=True)
    for k in range(4):
        text = "".join(f"{line}\n" for line in lines.get(k, []))
        (directory / split / f"fold{k}.txt").write_text(text)


@pytest.fixture
def hsnet_splits(voc: Path) -> Path:
    """Val folds: fold 0 (labels 1-5) lists image 1 and 3 for aeroplane (label 1), fold 2
    (labels 11-15) lists image 2 for diningtable (11) but not for motorbike (15)."""
    splits = voc.parent / "splits" / "pascal"
    write_hsnet_folds(
        splits,
        "val",
        {0: ["2007_000001__01", "2007_000003__01"], 2: ["2007_000002__11"]},
    )
    return splits


def test_hsnet_fold_files_decide_the_images(voc: Path, hsnet_splits: Path) -> None:
    source = open_spec(f"pascal:{voc},masks=SegmentationClassAug,splits={hsnet_splits}")
    assert source.image_ids == ("2007_000001", "2007_000003", "2007_000002")
    assert source.images_of(index("aeroplane")) == ("2007_000001", "2007_000003")
    assert source.images_of(index("diningtable")) == ("2007_000002",)
    assert source.images_of(index("motorbike")) == ()  # in the mask, not in HSNet's list
    assert source.images_of(index("dog")) == ()
    assert source.load("2007_000002", index("diningtable")).mask.sum() == 4
    assert source.settings()["splits"] == str(hsnet_splits)
    assert source.default_fold == "0"


def test_hsnet_fold_files_with_exact_counts(voc: Path, hsnet_splits: Path) -> None:
    spec = f"pascal:{voc},masks=SegmentationClassAug,splits={hsnet_splits}"
    assert open_spec(spec, min_mask_pixels=2).images_of(index("aeroplane")) == ("2007_000001",)


def test_hsnet_fold_files_read_no_mask_before_loading(
    voc: Path, hsnet_splits: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_spec(f"pascal:{voc},masks=SegmentationClassAug,splits={hsnet_splits}")

    def fail(path: object) -> None:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr("fewseg.data.pascal.read_label_map", fail)
    assert source.images_of(index("diningtable")) == ("2007_000002",)


def test_hsnet_train_folds_and_missing_files(voc: Path, hsnet_splits: Path) -> None:
    write_hsnet_folds(hsnet_splits, "trn", {1: ["2007_000001__12"]})
    source = open_spec(f"pascal:{voc},split=train,splits={hsnet_splits}")
    assert source.images_of(index("dog")) == ("2007_000001",)
    (voc / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(FewSegError, match=r"JPEGImages/2007_000001\.jpg: no such file"):
        open_spec(f"pascal:{voc},split=train,splits={hsnet_splits}").images_of(0)
    (hsnet_splits / "val" / "fold3.txt").unlink()
    with pytest.raises(FewSegError, match=r"val/fold3\.txt: no such split file"):
        open_spec(f"pascal:{voc},splits={hsnet_splits}")


@pytest.mark.parametrize("line", ["2007_000001", "2007_000001__21", "2007_000001__x", "__01"])
def test_malformed_hsnet_line(voc: Path, hsnet_splits: Path, line: str) -> None:
    (hsnet_splits / "val" / "fold1.txt").write_text(f"{line}\n")
    with pytest.raises(FewSegError, match=r"fold1\.txt:1: expected '<image>__<label 1\.\.20>'"):
        open_spec(f"pascal:{voc},splits={hsnet_splits}")


def test_list_and_splits_together_are_refused(voc: Path, hsnet_splits: Path) -> None:
    with pytest.raises(FewSegError, match="give list= or splits=, not both"):
        open_spec(f"pascal:{voc},list=mine.txt,splits={hsnet_splits}")


def test_pfenet_pair_list(voc: Path) -> None:
    """PFENet's lists/pascal/val.txt: 'JPEGImages/<stem>.jpg SegmentationClassAug/<stem>.png'."""
    (voc / "lists").mkdir()
    (voc / "lists" / "val.txt").write_text(
        "JPEGImages/2007_000002.jpg SegmentationClassAug/2007_000002.png\n"
        "JPEGImages/2007_000003.jpg SegmentationClassAug/2007_000003.png\n"
    )
    source = open_spec(f"pascal:{voc},masks=SegmentationClassAug,list=lists/val.txt")
    assert source.image_ids == ("2007_000002", "2007_000003")
    assert source.images_of(index("tvmonitor")) == ("2007_000003",)
    assert source.images_of(index("diningtable")) == ("2007_000002",)
