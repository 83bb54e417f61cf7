from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewseg.data.fss1000 import Fss1000Source
from fewseg.data.spec import SOURCES, parse_spec
from fewseg.errors import FewSegError

H, W = 4, 5
CLASSES = ("abacus", "bear", "cat", "dog", "eagle")


def gray_mask(foreground: int) -> np.ndarray:
    """The first ``foreground`` pixels (row-major) are white, one more is a dark gray."""
    values = np.zeros(H * W, dtype=np.uint8)
    values[:foreground] = 255
    values[foreground] = 100
    return values.reshape(H, W)


def write_pair(class_dir: Path, stem: str, mask: np.ndarray, mode: str = "RGB") -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(class_dir / f"{stem}.jpg")
    Image.fromarray(mask, mode="L").convert(mode).save(class_dir / f"{stem}.png")


@pytest.fixture
def fss(tmp_path: Path) -> Path:
    root = tmp_path / "fewshot_data"
    for n, name in enumerate(CLASSES):
        class_dir = root / name
        class_dir.mkdir(parents=True)
        write_pair(class_dir, "1", gray_mask(6 + n))
        write_pair(class_dir, "2", gray_mask(2), mode="L")
    return root


def write_splits(root: Path, **splits: tuple[str, ...]) -> None:
    for split, names in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


def open_spec(spec: str, min_mask_pixels: int = 0) -> Fss1000Source:
    kind, root, options = parse_spec(spec)
    source = SOURCES.get(kind)(root, options, min_mask_pixels)
    options.reject_rest()
    assert isinstance(source, Fss1000Source)
    return source


def test_classes_are_sorted_directories(fss: Path) -> None:
    (fss / "notes.txt").write_text("not a class\n")
    classes = Fss1000Source(fss).classes()
    assert [(c.index, c.name) for c in classes] == list(enumerate(CLASSES))


def test_images_of_each_class(fss: Path) -> None:
    source = Fss1000Source(fss)
    assert source.images_of(0) == ("abacus/1", "abacus/2")
    assert source.images_of(3) == ("dog/1", "dog/2")


def test_load_thresholds_white_and_has_no_ignore(fss: Path) -> None:
    source = Fss1000Source(fss)
    sample = source.load("bear/1", 1)
    expected = np.zeros(H * W, dtype=bool)
    expected[:7] = True
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, expected.reshape(H, W))
    assert not sample.ignore.any()
    assert sample.ignore.shape == (H, W)
    assert source.load("bear/2", 1).mask.sum() == 2


def test_load_for_another_class_is_empty(fss: Path) -> None:
    sample = Fss1000Source(fss).load("bear/1", 0)
    assert not sample.mask.any()


def test_min_mask_pixels_counts_mask_pixels(fss: Path) -> None:
    source = Fss1000Source(fss, min_mask_pixels=3)
    assert source._class_pixel_counts()[2] == {"cat/1": 8, "cat/2": 2}
    assert source.images_of(2) == ("cat/1",)
    assert Fss1000Source(fss, min_mask_pixels=9).images_of(2) == ()
    assert Fss1000Source(fss, min_mask_pixels=9).images_of(3) == ("dog/1",)


def test_fold_all(fss: Path) -> None:
    split = Fss1000Source(fss).fold_split("all")
    assert split.test == (0, 1, 2, 3, 4)
    assert split.train == ()
    assert split.convention == "all"


def test_split_files_select_train_val_test(fss: Path) -> None:
    (fss / "zebra").mkdir()  # not in any split file, and not even a valid class directory
    write_splits(fss, train=("bear", "abacus"), val=("dog",), test=("eagle",))
    source = open_spec(f"fss1000:{fss},train=train.txt,val=val.txt,test=test.txt")
    assert [c.name for c in source.classes()] == ["abacus", "bear", "dog", "eagle"]
    test = source.fold_split("test")
    assert (test.fold, test.convention) == ("test", "fss1000-split")
    assert [source.class_name(c) for c in test.test] == ["eagle"]
    assert [source.class_name(c) for c in test.train] == ["abacus", "bear"]
    val = source.fold_split("val")
    assert [source.class_name(c) for c in val.test] == ["dog"]
    assert [source.class_name(c) for c in val.train] == ["abacus", "bear"]
    settings = source.settings()
    assert settings["kind"] == "fss1000"
    assert settings["test_file"] == str(fss / "test.txt")


def test_without_train_file_the_rest_is_meta_train(fss: Path) -> None:
    write_splits(fss, val=("dog",), test=("eagle", "cat"))
    source = open_spec(f"fss1000:{fss},val=val.txt,test={fss / 'test.txt'}")
    test = source.fold_split("test")
    assert [source.class_name(c) for c in test.test] == ["cat", "eagle"]
    assert [source.class_name(c) for c in test.train] == ["abacus", "bear"]


def test_fold_needs_its_split_file(fss: Path) -> None:
    write_splits(fss, test=("eagle",))
    source = open_spec(f"fss1000:{fss},test=test.txt")
    with pytest.raises(FewSegError, match="val=FILE"):
        source.fold_split("val")
    with pytest.raises(FewSegError, match="unknown fold '0'"):
        source.fold_split("0")


def test_unknown_class_in_split_file(fss: Path) -> None:
    write_splits(fss, test=("eagle", "unicorn"))
    with pytest.raises(FewSegError, match=r"test\.txt: unknown class 'unicorn'"):
        open_spec(f"fss1000:{fss},test=test.txt")


def test_class_in_two_split_files(fss: Path) -> None:
    write_splits(fss, train=("eagle",), test=("eagle",))
    with pytest.raises(FewSegError, match="'eagle' is in both"):
        open_spec(f"fss1000:{fss},train=train.txt,test=test.txt")


def test_missing_split_file(fss: Path) -> None:
    with pytest.raises(FewSegError, match=r"gone\.txt: no such split file"):
        open_spec(f"fss1000:{fss},val=gone.txt")


def test_spec_rejects_unknown_option_and_missing_root(fss: Path) -> None:
    with pytest.raises(FewSegError, match="unknown option"):
        open_spec(f"fss1000:{fss},shots=5")
    with pytest.raises(FewSegError, match="fss1000:ROOT"):
        open_spec("fss1000")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FewSegError, match="nowhere: no such directory"):
        Fss1000Source(tmp_path / "nowhere")


def test_class_directory_without_pairs(fss: Path) -> None:
    (fss / "empty").mkdir()
    with pytest.raises(FewSegError, match="empty: class directory without"):
        Fss1000Source(fss)


def test_image_without_mask(fss: Path) -> None:
    (fss / "cat" / "2.png").unlink()
    with pytest.raises(FewSegError, match=r"cat/2\.jpg: no mask 2\.png"):
        Fss1000Source(fss)


def test_corrupt_image(fss: Path) -> None:
    (fss / "dog" / "1.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(FewSegError, match=r"dog/1\.jpg: cannot read image"):
        Fss1000Source(fss).load("dog/1", 3)


def test_corrupt_mask_while_counting(fss: Path) -> None:
    (fss / "dog" / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FewSegError, match=r"dog/2\.png: cannot read image"):
        Fss1000Source(fss, min_mask_pixels=1).images_of(3)


def test_mask_image_size_mismatch(fss: Path) -> None:
    Image.fromarray(np.zeros((H + 2, W), dtype=np.uint8)).save(fss / "eagle" / "1.png")
    with pytest.raises(FewSegError, match=r"eagle/1\.png: mask is 5x6 but its image is 5x4"):
        Fss1000Source(fss).load("eagle/1", 4)


def test_unknown_image(fss: Path) -> None:
    with pytest.raises(FewSegError, match="unknown image 'eagle/9'"):
        Fss1000Source(fss).load("eagle/9", 4)


def test_default_fold_is_all_without_a_test_file(fss: Path) -> None:
    assert Fss1000Source(fss).default_fold == "all"
    write_splits(fss, val=("cat",))
    assert Fss1000Source(fss, val="val.txt").default_fold == "all"


def test_default_fold_is_test_with_a_test_file(fss: Path) -> None:
    write_splits(fss, test=("dog",))
    source = Fss1000Source(fss, test="test.txt")
    assert source.default_fold == "test"
    assert source.fold_split(source.default_fold).test == (3,)


HSNET_SPLITS = {"trn": ("abacus", "bear", "cat"), "val": ("dog",), "test": ("eagle",)}


def write_hsnet_splits(directory: Path) -> None:
    """HSNet's data/splits/fss: trn/val/test.txt, one class per line, CRLF line ends."""
    directory.mkdir(parents=True)
    for name, classes in HSNET_SPLITS.items():
        (directory / f"{name}.txt").write_bytes("".join(f"{c}\r\n" for c in classes).encode())


def test_hsnet_split_directory(fss: Path, tmp_path: Path) -> None:
    write_hsnet_splits(tmp_path / "splits" / "fss")
    source = open_spec(f"fss1000:{fss},splits={tmp_path / 'splits' / 'fss'}")
    assert [c.name for c in source.classes()] == list(CLASSES)
    assert source.default_fold == "test"
    test = source.fold_split("test")
    assert (test.train, test.test) == ((0, 1, 2), (4,))
    assert source.fold_split("val").test == (3,)
    assert source.settings()["train_file"] == str(tmp_path / "splits" / "fss" / "trn.txt")


def test_hsnet_split_directory_relative_to_root(fss: Path) -> None:
    write_hsnet_splits(fss / "splits")
    source = open_spec(f"fss1000:{fss},splits=splits")
    assert source.fold_split("test").test == (4,)


def test_hsnet_split_directory_errors(fss: Path, tmp_path: Path) -> None:
    with pytest.raises(FewSegError, match=r"nowhere: no such split directory"):
        open_spec(f"fss1000:{fss},splits=nowhere")
    write_hsnet_splits(tmp_path / "splits")
    with pytest.raises(FewSegError, match=r"give splits= or test=, not both"):
        open_spec(f"fss1000:{fss},splits={tmp_path / 'splits'},test=x.txt")
    (tmp_path / "splits" / "val.txt").unlink()
    with pytest.raises(FewSegError, match=r"splits/val\.txt: no such split file"):
        open_spec(f"fss1000:{fss},splits={tmp_path / 'splits'}")


def test_evaluate_without_a_fold_takes_every_class(
    fss: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from fewseg.cli import main

    out = tmp_path / "out"
    code = main(
        ["evaluate", "--learner", "baseline", "--dataset", f"fss1000:{fss}", "--shots", "1",
         "--episodes", "6", "--size", "32", "--no-progress",
         "--out", str(out)]
    )  # fmt: skip
    capsys.readouterr()
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["fold"] == "all" and len(report["classes_used"]) == len(CLASSES)
