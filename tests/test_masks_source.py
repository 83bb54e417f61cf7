"""The indexed-mask reader on hand-made folders, and on CamVid when present."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewseg.data.masks import IndexedMaskSource
from fewseg.data.spec import open_source
from fewseg.errors import FewSegError

CAMVID = Path(__file__).parents[1].parent / "shared/data/camvid"
W, H = 6, 4
CLASSES = "0 sky\n\n1 road\n5 car\n255 void\n"


def write_image(path: Path, width: int = W, height: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    image.save(path)


def mask_a() -> np.ndarray:
    """sky 12 px, road 6 px, void 6 px."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[2:4, 0:3] = 1
    labels[2:4, 3:6] = 255
    return labels


def mask_b() -> np.ndarray:
    """car 6 px (top row), road 18 px."""
    labels = np.ones((H, W), dtype=np.uint8)
    labels[0, :] = 5
    return labels


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "classes.txt").write_text(CLASSES)
    write_image(tmp_path / "images/a.jpg")
    write_image(tmp_path / "images/b.png")
    write_mask(tmp_path / "masks/a.png", mask_a())
    write_mask(tmp_path / "masks/b.png", mask_b(), palette=True)
    return tmp_path


def open_masks(
    root: Path, options: str = ",ignore=255", min_mask_pixels: int = 0
) -> IndexedMaskSource:
    source = open_source(f"masks:{root}{options}", min_mask_pixels)
    assert isinstance(source, IndexedMaskSource)
    return source


def test_classes_in_file_order_without_listed_ignore(root: Path) -> None:
    assert "255 void" in (root / "classes.txt").read_text()
    source = open_masks(root)
    assert [(c.index, c.name) for c in source.classes()] == [(0, "sky"), (1, "road"), (2, "car")]
    assert [source.pixel_value(i) for i in range(3)] == [0, 1, 5]


def test_exact_pixel_counts_and_images_of(root: Path) -> None:
    source = open_masks(root)
    assert source._class_pixel_counts() == {0: {"a": 12}, 1: {"a": 6, "b": 18}, 2: {"b": 6}}
    assert source.images_of(0) == ("a",)
    assert source.images_of(1) == ("a", "b")
    assert source.images_of(2) == ("b",)


def test_min_mask_pixels_filters(root: Path) -> None:
    source = open_masks(root, min_mask_pixels=10)
    assert source.images_of(0) == ("a",)
    assert source.images_of(1) == ("b",)
    assert source.images_of(2) == ()


def test_load_mask_and_ignore(root: Path) -> None:
    sample = open_masks(root).load("a", 1)
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, mask_a() == 1)
    np.testing.assert_array_equal(sample.ignore, mask_a() == 255)
    assert sample.mask.dtype == bool
    assert sample.ignore.dtype == bool


def test_palette_mask_uses_indices(root: Path) -> None:
    sample = open_masks(root).load("b", 2)
    np.testing.assert_array_equal(sample.mask, mask_b() == 5)
    assert not sample.ignore.any()


def test_value_neither_class_nor_ignore_names_mask(root: Path) -> None:
    write_mask(root / "masks/a.png", np.where(mask_a() == 255, 7, mask_a()))
    source = open_masks(root)
    with pytest.raises(FewSegError, match=re.escape(f"{root / 'masks/a.png'}: pixel value 7 ")):
        source.images_of(0)


def test_no_ignore_option_means_no_ignore(root: Path) -> None:
    source = open_masks(root, "")
    assert source.settings()["ignore"] is None
    assert [c.name for c in source.classes()] == ["sky", "road", "car", "void"]
    assert source.images_of(3) == ("a",)
    assert not source.load("a", 3).ignore.any()
    assert source.load("a", 3).mask.sum() == 6


def test_custom_folders_and_class_file(root: Path) -> None:
    (root / "images").rename(root / "test")
    (root / "masks").rename(root / "testannot")
    (root / "classes.txt").rename(root / "names.txt")
    source = open_masks(root, ",images=test,masks=testannot,classes=names.txt,ignore=255")
    assert source.load("b", 1).mask.sum() == 18
    settings = source.settings()
    assert settings["kind"] == "masks"
    assert settings["images"] == str(root / "test")
    assert settings["masks"] == str(root / "testannot")
    assert settings["classes"] == str(root / "names.txt")
    assert settings["ignore"] == 255


@pytest.mark.parametrize("line", ["sky", "x sky", "300 sky", "-1 sky"])
def test_malformed_class_line_names_file_and_line(root: Path, line: str) -> None:
    (root / "classes.txt").write_text(f"0 sky\n\n{line}\n")
    with pytest.raises(FewSegError, match=re.escape(f"{root / 'classes.txt'}:3:")):
        open_masks(root)


def test_duplicate_class_index(root: Path) -> None:
    (root / "classes.txt").write_text("0 sky\n0 road\n")
    with pytest.raises(FewSegError, match="listed twice"):
        open_masks(root)


def test_image_without_mask_names_it(root: Path) -> None:
    (root / "masks/b.png").unlink()
    with pytest.raises(FewSegError, match=re.escape(f"{root / 'images/b.png'} has no mask")):
        open_masks(root)


def test_mask_without_image_names_it(root: Path) -> None:
    write_mask(root / "masks/c.png", mask_b())
    with pytest.raises(FewSegError, match=re.escape(f"{root / 'masks/c.png'} has no image")):
        open_masks(root)


def test_missing_folder_names_it(root: Path) -> None:
    with pytest.raises(FewSegError, match=re.escape(str(root / "annot"))):
        open_masks(root, ",masks=annot")


def test_size_mismatch_names_mask(root: Path) -> None:
    write_image(root / "images/a.jpg", width=W + 1)
    source = open_masks(root)
    with pytest.raises(FewSegError, match=re.escape(f"{root / 'masks/a.png'}: mask is 6x4")):
        source.load("a", 0)


def test_corrupt_image_names_it(root: Path) -> None:
    (root / "images/a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    source = open_masks(root)
    with pytest.raises(FewSegError, match=re.escape(str(root / "images/a.jpg"))):
        source.load("a", 0)


def test_unknown_image_and_class(root: Path) -> None:
    source = open_masks(root)
    with pytest.raises(FewSegError, match="no image 'zz'"):
        source.load("zz", 0)
    with pytest.raises(FewSegError, match="no class with index 3"):
        source.load("a", 3)


def test_spec_errors(root: Path) -> None:
    with pytest.raises(FewSegError, match="needs a root directory"):
        open_source("masks")
    with pytest.raises(FewSegError, match=r"unknown option.*colour"):
        open_source(f"masks:{root},colour=red")
    with pytest.raises(FewSegError, match="not an integer"):
        open_source(f"masks:{root},ignore=void")


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason="camvid not present")
def test_camvid_test_split() -> None:
    source = open_source(
        f"masks:{CAMVID},images=test,masks=testannot,classes=classes.txt,ignore=11"
    )
    names = [c.name for c in source.classes()]
    assert len(names) == 11
    assert "void" not in names
    assert names[0] == "sky"
    image_id = source.images_of(names.index("car"))[0]
    sample = source.load(image_id, names.index("car"))
    assert sample.mask.shape == sample.image.shape[:2] == (360, 480)
    assert sample.mask.any()


def test_default_fold_is_the_first_numbered_fold(root: Path) -> None:
    assert open_masks(root).default_fold == "0"
