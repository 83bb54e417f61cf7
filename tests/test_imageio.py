"""read_rgb: every mode as RGB, errors that name the file."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewseg.data.imageio import read_rgb
from fewseg.errors import FewSegError


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "1"])
def test_read_rgb_gives_rgb_for_every_mode(tmp_path: Path, mode: str) -> None:
    g = np.random.default_rng(0)
    rgb = Image.fromarray(g.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    path = tmp_path / "image.png"
    image.save(path)
    array = read_rgb(path)
    assert array.shape == (6, 5, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array, np.asarray(Image.open(path).convert("RGB")))


def test_read_rgb_names_a_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(FewSegError, match=r"missing\.jpg: no such file"):
        read_rgb(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(FewSegError, match=r"corrupt\.jpg: cannot read image"):
        read_rgb(corrupt)
