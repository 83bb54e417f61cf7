"""The COCO reader's on-disk index: built once, reused, rebuilt when stale or damaged."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_coco_source import coco_root  # noqa: F401  (fixture)

from fewseg.data import coco_index
from fewseg.data.coco import CocoSource
from fewseg.data.coco_index import CocoIndex, default_cache_dir, index_name
from fewseg.data.spec import open_source
from fewseg.errors import FewSegError

JSON = "annotations/instances.json"


def open_coco(root: Path, cache: Path, min_mask_pixels: int = 0) -> CocoSource:
    source = open_source(f"coco:{root}", min_mask_pixels, index_cache=cache)
    assert isinstance(source, CocoSource)
    return source


def every_mask(source: CocoSource) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    return {
        (image, c.index): source.load_masks(image, c.index)
        for c in source.classes()
        for image in ("7", "12", "20")
    }


def forbid_json(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: Path) -> None:
        raise AssertionError(f"parsed {path}")

    monkeypatch.setattr(coco_index, "read_instances", fail)


def test_index_is_built_once_then_reused_without_parsing(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    first = open_coco(coco_root, cache)
    assert first.index.built
    assert first.index.path.parent == cache
    assert first.index.path.name.startswith("instances-")
    forbid_json(monkeypatch)
    second = open_coco(coco_root, cache)
    assert not second.index.built
    assert [c.name for c in second.classes()] == ["person", "car", "toothbrush"]
    assert second.images_of(1) == ("12", "7")
    assert second.load("7", 0).mask.sum() == 28


def test_samples_are_identical_with_and_without_an_index(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    for min_mask_pixels in (0, 3, 10):
        building = open_coco(coco_root, cache / str(min_mask_pixels), min_mask_pixels)
        reusing = open_coco(coco_root, cache / str(min_mask_pixels), min_mask_pixels)
        assert building.index.built and not reusing.index.built
        for c in building.classes():
            assert building.images_of(c.index) == reusing.images_of(c.index)
        for key, (mask, ignore) in every_mask(building).items():
            again = reusing.load_masks(*key)
            np.testing.assert_array_equal(mask, again[0])
            np.testing.assert_array_equal(ignore, again[1])
        np.testing.assert_array_equal(building.load("12", 1).image, reusing.load("12", 1).image)


def test_exact_pixel_counts_are_stored_for_later_commands(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = open_coco(coco_root, tmp_path, min_mask_pixels=10)
    assert first.images_of(1) == ("12",)
    assert first.index.exact_path.is_file()

    def fail(self: CocoIndex) -> None:
        raise AssertionError("decoded the annotations again")

    monkeypatch.setattr(CocoIndex, "all_annotations", fail)
    again = open_coco(coco_root, tmp_path, min_mask_pixels=10)
    assert again.images_of(1) == ("12",)
    assert again.images_of(0) == ("7",)
    assert open_coco(coco_root, tmp_path, min_mask_pixels=29).images_of(0) == ()


def test_index_is_rebuilt_when_the_json_changes(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = coco_root / JSON
    open_coco(coco_root, tmp_path)
    dataset = json.loads(path.read_text())
    dataset["categories"][1]["name"] = "human"
    path.write_text(json.dumps(dataset))
    source = open_coco(coco_root, tmp_path)
    assert source.index.built
    assert source.classes()[0].name == "human"


def test_same_size_edit_with_restored_mtime_is_noticed(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = coco_root / JSON
    open_coco(coco_root, tmp_path)
    stat = path.stat()
    path.write_text(path.read_text().replace('"person"', '"humans"'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    source = open_coco(coco_root, tmp_path)
    assert source.index.built
    assert source.classes()[0].name == "humans"


def test_moved_json_gets_its_own_index(coco_root: Path, tmp_path: Path) -> None:  # noqa: F811
    (coco_root / JSON).rename(coco_root / "val.json")
    first = open_source(f"coco:{coco_root},annotations=val.json", index_cache=tmp_path)
    assert isinstance(first, CocoSource)
    assert first.index.path.name.startswith("val-")
    assert first.index.path.name == index_name(coco_root / "val.json")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"not a database at all"), id="garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), id="half"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes()[:4096] + bytes(p.stat().st_size - 4096)),
            id="zeroed-pages",
        ),
    ],
)
def test_damaged_index_is_rebuilt(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
    damage: object,
) -> None:
    expected = every_mask(open_coco(coco_root, tmp_path))
    index = tmp_path / index_name(coco_root / JSON)
    damage(index)  # type: ignore[operator]
    source = open_coco(coco_root, tmp_path)
    assert source.index.built
    for key, (mask, ignore) in every_mask(source).items():
        np.testing.assert_array_equal(mask, expected[key][0])
        np.testing.assert_array_equal(ignore, expected[key][1])


def test_index_of_another_format_is_rebuilt(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    first = open_coco(coco_root, tmp_path)
    with sqlite3.connect(first.index.path) as connection:
        connection.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    connection.close()
    assert open_coco(coco_root, tmp_path).index.built


def damage_entry(path: Path, image_id: int) -> None:
    """Flip a byte in the middle of the image's compressed entry, in place."""
    connection = sqlite3.connect(path)
    query = "SELECT entries FROM annotations WHERE image_id = ?"
    (blob,) = connection.execute(query, (image_id,)).fetchone()
    connection.close()
    data = bytearray(path.read_bytes())
    at = data.find(blob)
    assert at > 0 and len(blob) > 8
    data[at + len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_entry_damaged_inside_is_rebuilt_when_read(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A flipped byte inside a compressed entry passes SQLite's checks; zlib's does not."""
    expected = every_mask(open_coco(coco_root, tmp_path))
    path = tmp_path / index_name(coco_root / JSON)
    with sqlite3.connect(path) as connection:
        (blob,) = connection.execute(
            "SELECT entries FROM annotations WHERE image_id = 12"
        ).fetchone()
    connection.close()
    data = bytearray(path.read_bytes())
    at = data.find(blob)
    assert at > 0 and len(blob) > 8
    data[at + len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    source = open_coco(coco_root, tmp_path)
    assert not source.index.built  # the damage is not visible when the index opens
    mask, ignore = source.load_masks("12", 1)
    assert source.index.built
    np.testing.assert_array_equal(mask, expected[("12", 1)][0])
    np.testing.assert_array_equal(ignore, expected[("12", 1)][1])


def test_entry_damaged_inside_is_rebuilt_while_counting(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Exact counts read every entry in one pass: after image 7, image 12's entry is
    damaged; the pass goes on in the rebuilt index from image 12."""
    path = tmp_path / index_name(coco_root / JSON)
    expected = [open_coco(coco_root, tmp_path, 3).images_of(c) for c in range(3)]
    path.with_suffix(".exact.sqlite").unlink()
    damage_entry(path, 12)
    source = open_coco(coco_root, tmp_path, 3)
    assert [source.images_of(c) for c in range(3)] == expected
    assert source.index.built


def test_json_errors_still_name_the_json(coco_root: Path, tmp_path: Path) -> None:  # noqa: F811
    path = coco_root / JSON
    dataset = json.loads(path.read_text())
    dataset["annotations"][2]["area"] = "eight"
    path.write_text(json.dumps(dataset))
    with pytest.raises(FewSegError, match="annotation 3 has an invalid 'area'") as info:
        open_coco(coco_root, tmp_path)
    assert str(path) in str(info.value)
    assert not list(tmp_path.glob("*.sqlite"))


def test_first_invalid_group_in_the_json_is_reported(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Annotations 4 (image 12) and 1 (image 7) are both broken: image 7's group comes
    first in the json, though exact counts are computed image by image in id order."""
    path = coco_root / JSON
    dataset = json.loads(path.read_text())
    dataset["annotations"].insert(0, dataset["annotations"].pop(3))  # ann 4 first
    for ann in dataset["annotations"]:
        if ann["id"] in (1, 4):
            ann["segmentation"] = [[1, 2]]
    path.write_text(json.dumps(dataset))
    with pytest.raises(FewSegError, match="annotation 4 has an invalid segmentation"):
        open_coco(coco_root, tmp_path, min_mask_pixels=1).images_of(0)


def test_unwritable_cache_folder_falls_back_to_a_temporary_one(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    source = open_coco(coco_root, blocker / "index")
    assert source.load("7", 0).mask.sum() == 28
    assert source.index.path.parent != blocker / "index"
    err = capsys.readouterr().err
    assert err.startswith(f"fewseg: warning: cannot write the dataset index in {blocker / 'index'}")
    assert err.count("\n") == 1


def test_source_pickles_and_reopens_its_index(coco_root: Path, tmp_path: Path) -> None:  # noqa: F811
    source = open_coco(coco_root, tmp_path)
    source.load_masks("7", 0)
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.load_masks("12", 1)[1], source.load_masks("12", 1)[1])


def test_default_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "fewseg" / "index"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == Path.home() / ".cache" / "fewseg" / "index"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "fewseg" / "index"


def test_default_cache_is_used_without_index_cache(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(coco_index, "default_cache_dir", default_cache_dir)  # conftest's
    source = open_source(f"coco:{coco_root}")
    assert isinstance(source, CocoSource)
    assert source.index.path.parent == tmp_path / "xdg" / "fewseg" / "index"


def test_default_fold_is_the_first_coco_20i_fold(coco_root: Path, tmp_path: Path) -> None:  # noqa: F811
    assert open_coco(coco_root, tmp_path).default_fold == "0"


def test_the_command_line_keeps_the_index_where_it_is_told(
    coco_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fewseg.cli import main

    cache = tmp_path / "indexes"
    assert main(["datasets", f"coco:{coco_root}", "--index-cache", str(cache)]) == 0
    capsys.readouterr()
    assert list(cache.iterdir())  # the index, built there
