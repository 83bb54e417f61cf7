"""The COCO reader on a hand-made instances json, and on coco-mini when present."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fewseg.data.coco import CocoSource
from fewseg.data.spec import open_source
from fewseg.errors import FewSegError

COCO_MINI = Path(__file__).parents[1].parent / "shared/data/coco-mini"
W, H = 10, 8


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """Polygon of the pixels x0..x1-1, y0..y1-1 (pycocotools rasterisation)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def crowd_rle(rows: slice, cols: slice) -> dict[str, Any]:
    region = np.zeros((H, W), dtype=np.uint8)
    region[rows, cols] = 1
    rle = mask_utils.encode(np.asfortranarray(region))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def annotation(
    ann_id: int, image_id: int, category_id: int, segmentation: Any, area: float, crowd: int = 0
) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": area,
        "bbox": [0, 0, 1, 1],
        "iscrowd": crowd,
    }


def write_image(path: Path, width: int = W, height: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    Image.fromarray(pixels).save(path)


def write_json(path: Path, dataset: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataset))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """Categories 90, 1, 3 (out of order); images 7 (jpg), 12 (png), 20 (jpg).

    Image 7: two overlapping persons (16 + 16 - 4 = 28 px) and a car (8 px).
    Image 12: a car (16 px), a car crowd overlapping it (24 px, 16 outside the car) and a
    2 px toothbrush whose json area claims 50.
    Image 20: only a person crowd.
    """
    dataset = {
        "info": {},
        "licenses": [],
        "categories": [
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": W, "height": H},
            {"id": 12, "file_name": "b.png", "width": W, "height": H},
            {"id": 20, "file_name": "c.jpg", "width": W, "height": H},
        ],
        "annotations": [
            annotation(1, 7, 1, rect(0, 0, 4, 4), 16),
            annotation(2, 7, 1, rect(2, 2, 6, 6), 16),
            annotation(3, 7, 3, rect(6, 0, 10, 2), 8),
            annotation(4, 12, 3, rect(0, 4, 4, 8), 16),
            annotation(5, 12, 3, crowd_rle(slice(4, 8), slice(2, 8)), 24, crowd=1),
            annotation(6, 12, 90, rect(8, 0, 9, 2), 50),
            annotation(7, 20, 1, crowd_rle(slice(0, 8), slice(0, 10)), 80, crowd=1),
        ],
    }
    write_json(tmp_path / "annotations/instances.json", dataset)
    for name in ("a.jpg", "b.png", "c.jpg"):
        write_image(tmp_path / "images" / name)
    return tmp_path


def open_coco(root: Path, min_mask_pixels: int = 0) -> CocoSource:
    source = open_source(f"coco:{root}", min_mask_pixels)
    assert isinstance(source, CocoSource)
    return source


def test_classes_are_sorted_by_category_id(coco_root: Path) -> None:
    source = open_coco(coco_root)
    assert [(c.index, c.name) for c in source.classes()] == [
        (0, "person"),
        (1, "car"),
        (2, "toothbrush"),
    ]


def test_images_of_each_class_ignore_crowd_only_images(coco_root: Path) -> None:
    source = open_coco(coco_root)
    assert source.images_of(0) == ("7",)
    assert source.images_of(1) == ("12", "7")
    assert source.images_of(2) == ("12",)


def test_mask_is_union_of_instances(coco_root: Path) -> None:
    sample = open_coco(coco_root).load("7", 0)
    expected = np.zeros((H, W), dtype=bool)
    expected[0:4, 0:4] = True
    expected[2:6, 2:6] = True
    assert sample.image.shape == (H, W, 3)
    assert sample.image.dtype == np.uint8
    assert sample.mask.dtype == bool
    assert sample.mask.sum() == 28
    np.testing.assert_array_equal(sample.mask, expected)
    assert not sample.ignore.any()


@pytest.mark.parametrize(("image_id", "class_index"), [("7", 0), ("12", 1), ("12", 0)])
def test_masks_alone_equal_those_of_a_full_load(
    coco_root: Path, image_id: str, class_index: int
) -> None:
    source = open_coco(coco_root)
    sample = source.load(image_id, class_index)
    mask, ignore = source.load_masks(image_id, class_index)
    np.testing.assert_array_equal(mask, sample.mask)
    np.testing.assert_array_equal(ignore, sample.ignore)


def test_crowd_region_outside_instances_is_ignored(coco_root: Path) -> None:
    sample = open_coco(coco_root).load("12", 1)
    mask = np.zeros((H, W), dtype=bool)
    mask[4:8, 0:4] = True
    ignore = np.zeros((H, W), dtype=bool)
    ignore[4:8, 4:8] = True
    np.testing.assert_array_equal(sample.mask, mask)
    np.testing.assert_array_equal(sample.ignore, ignore)


def test_crowd_of_another_class_is_not_ignored(coco_root: Path) -> None:
    sample = open_coco(coco_root).load("12", 2)
    assert sample.mask.sum() == 2
    assert not sample.ignore.any()


def test_min_mask_pixels_uses_exact_pixel_counts(coco_root: Path) -> None:
    at_least_3 = open_coco(coco_root, min_mask_pixels=3)
    assert at_least_3.images_of(2) == ()
    assert at_least_3.images_of(1) == ("12", "7")
    assert at_least_3.images_of(0) == ("7",)
    at_least_10 = open_coco(coco_root, min_mask_pixels=10)
    assert at_least_10.images_of(1) == ("12",)
    assert open_coco(coco_root, min_mask_pixels=29).images_of(0) == ()
    assert open_coco(coco_root, min_mask_pixels=28).images_of(0) == ("7",)


def test_settings_name_paths_and_convention(coco_root: Path) -> None:
    source = open_source(f"coco:{coco_root},folds=consecutive,images=images")
    settings = source.settings()
    assert settings["kind"] == "coco"
    assert settings["root"] == str(coco_root)
    assert settings["annotations"] == str(coco_root / "annotations/instances.json")
    assert settings["images"] == str(coco_root / "images")
    assert settings["fold_convention"] == "consecutive"


def test_custom_annotation_and_image_paths(coco_root: Path) -> None:
    (coco_root / "annotations/instances.json").rename(coco_root / "val.json")
    (coco_root / "images").rename(coco_root / "val2017")
    source = open_source(f"coco:{coco_root},annotations=val.json,images=val2017")
    assert source.load("7", 0).mask.sum() == 28


def eighty_category_root(tmp_path: Path) -> Path:
    ids = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
    assert len(ids) == 80
    categories = [{"id": i, "name": f"cat{i}"} for i in reversed(ids)]
    write_json(
        tmp_path / "annotations/instances.json",
        {"images": [], "annotations": [], "categories": categories},
    )
    (tmp_path / "images").mkdir()
    return tmp_path


def test_interleaved_folds_are_the_default(tmp_path: Path) -> None:
    source = open_source(f"coco:{eighty_category_root(tmp_path)}")
    split = source.fold_split("1")
    assert split.convention == "interleaved"
    assert split.test == tuple(range(1, 80, 4))
    assert split.test[:3] == (1, 5, 9)
    assert split.test[-1] == 77
    assert len(split.train) == 60
    assert set(split.train) | set(split.test) == set(range(80))
    assert source.classes()[split.test[0]].name == "cat2"


def test_consecutive_folds(tmp_path: Path) -> None:
    source = open_source(f"coco:{eighty_category_root(tmp_path)},folds=consecutive")
    split = source.fold_split("1")
    assert split.convention == "consecutive"
    assert split.test == tuple(range(20, 40))
    assert set(split.train) == set(range(80)) - set(range(20, 40))


def test_fold_all_and_bad_fold(tmp_path: Path) -> None:
    source = open_source(f"coco:{eighty_category_root(tmp_path)}")
    assert source.fold_split("all").test == tuple(range(80))
    with pytest.raises(FewSegError, match="fold"):
        source.fold_split("4")


def test_missing_root_in_spec() -> None:
    with pytest.raises(FewSegError, match=r"needs a root directory, e\.g\. coco:PATH"):
        open_source("coco")


def test_missing_json_names_path(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FewSegError, match=re.escape(str(tmp_path / "annotations/instances.json"))):
        open_source(f"coco:{tmp_path}")


def test_missing_images_dir_names_path(coco_root: Path) -> None:
    with pytest.raises(FewSegError, match=re.escape(str(coco_root / "train2017"))):
        open_source(f"coco:{coco_root},images=train2017")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "cannot read COCO json"),
        ("[1, 2]", "not a COCO instances file"),
        ('{"images": [], "annotations": []}', "categories"),
        (
            '{"images": [], "categories": [{"id": 1, "name": "a"}],'
            ' "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "segmentation": []}]}',
            "unknown image 5",
        ),
    ],
)
def test_invalid_json_is_one_line_error(coco_root: Path, content: str, reason: str) -> None:
    path = coco_root / "annotations/instances.json"
    path.write_text(content)
    with pytest.raises(FewSegError, match=reason) as info:
        open_coco(coco_root)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_image_file_names_it(coco_root: Path) -> None:
    (coco_root / "images/b.png").unlink()
    source = open_coco(coco_root)
    with pytest.raises(FewSegError, match=re.escape(str(coco_root / "images/b.png"))):
        source.load("12", 1)


def test_corrupt_image_names_it(coco_root: Path) -> None:
    (coco_root / "images/a.jpg").write_bytes(b"this is not a jpeg")
    source = open_coco(coco_root)
    with pytest.raises(FewSegError, match=re.escape(str(coco_root / "images/a.jpg"))):
        source.load("7", 0)


def test_image_size_differs_from_json(coco_root: Path) -> None:
    write_image(coco_root / "images/a.jpg", width=W + 2)
    source = open_coco(coco_root)
    with pytest.raises(FewSegError, match=r"a\.jpg.*10x8 but its image is 12x8"):
        source.load("7", 0)


def test_unknown_image_id(coco_root: Path) -> None:
    with pytest.raises(FewSegError, match="no image with id"):
        open_coco(coco_root).load("99", 0)


def test_unknown_option_is_rejected(coco_root: Path) -> None:
    with pytest.raises(FewSegError, match=r"unknown option.*colour"):
        open_source(f"coco:{coco_root},colour=red")


def test_bad_fold_convention_is_rejected(coco_root: Path) -> None:
    with pytest.raises(FewSegError, match="folds="):
        open_source(f"coco:{coco_root},folds=random")


@pytest.mark.slow
@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="coco-mini not present")
def test_coco_mini() -> None:
    source = open_source(f"coco:{COCO_MINI}")
    assert len(source.classes()) == 80
    assert source.classes()[0].name == "person"
    assert len(source.images_of(0)) == 136
    sample = source.load(source.images_of(0)[0], 0)
    assert sample.mask.shape == sample.image.shape[:2]
    assert sample.mask.any()


def test_invalid_segmentation_names_annotation(coco_root: Path) -> None:
    path = coco_root / "annotations/instances.json"
    dataset = json.loads(path.read_text())
    dataset["annotations"][0]["segmentation"] = [[1, 2]]
    write_json(path, dataset)
    source = open_coco(coco_root)
    with pytest.raises(FewSegError, match="annotation 1 has an invalid segmentation"):
        source.load("7", 0)
