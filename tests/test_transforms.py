"""Image/mask preprocessing: joint resize and augmentation, ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from fewseg.data.source import ClassSample
from fewseg.episodes.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_transform,
    resize_transform,
    sample_to_tensors,
)

# 4x4 mask and ignore region; pixel (0, 0) is both foreground and ignore: ignore wins.
MASK_4 = np.array(
    [
        [1, 0, 0, 1],
        [0, 1, 0, 0],
        [0, 0, 1, 1],
        [1, 0, 0, 0],
    ],
    dtype=bool,
)
IGNORE_4 = np.zeros((4, 4), dtype=bool)
IGNORE_4[0, 0] = IGNORE_4[0, 1] = IGNORE_4[3, 3] = True


def constant_image(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (height, width, 3)).copy()


def upsample2(a: np.ndarray) -> np.ndarray:
    """Each pixel becomes a 2x2 block (hand-written nearest 2x upsampling)."""
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def test_resize_output_shapes_and_dtypes() -> None:
    sample = ClassSample(
        constant_image(6, 10, (1, 2, 3)), np.ones((6, 10), bool), np.zeros((6, 10), bool)
    )
    image, mask, ignore = sample_to_tensors(sample, resize_transform(16))
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert mask.shape == (16, 16) and mask.dtype == torch.float32
    assert ignore.shape == (16, 16) and ignore.dtype == torch.bool
    # plain tensors, not tv_tensors subclasses
    assert (
        type(image) is torch.Tensor and type(mask) is torch.Tensor and type(ignore) is torch.Tensor
    )


def test_the_normalised_image_is_planar_and_equals_normalising_the_resized_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    sample = ClassSample(image, np.zeros((30, 40), bool), np.zeros((30, 40), bool))
    normalised, _, _ = sample_to_tensors(sample, resize_transform(20))
    assert normalised.is_contiguous()  # [3,H,W] planes, not the decoded HWC layout
    resized = v2.Resize((20, 20), antialias=True)(torch.from_numpy(image).permute(2, 0, 1))
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(normalised, (resized / 255.0 - mean) / std)


@pytest.mark.parametrize("rgb", [(0, 0, 0), (255, 255, 255), (10, 128, 250), (124, 116, 104)])
def test_constant_image_is_imagenet_normalised(rgb: tuple[int, int, int]) -> None:
    sample = ClassSample(constant_image(5, 7, rgb), np.zeros((5, 7), bool), np.zeros((5, 7), bool))
    image, _, _ = sample_to_tensors(sample, resize_transform(12))
    for channel, (value, mean, std) in enumerate(
        zip(rgb, IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ):
        expected = (value / 255 - mean) / std
        assert torch.allclose(image[channel], torch.full((12, 12), expected), atol=1e-5), channel


def test_normalisation_constants_are_imagenet() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    sample = ClassSample(
        constant_image(2, 2, (10, 128, 250)), np.zeros((2, 2), bool), np.zeros((2, 2), bool)
    )
    image, _, _ = sample_to_tensors(sample, resize_transform(2))
    # hand-computed: (10/255 - 0.485)/0.229, (128/255 - 0.456)/0.224, (250/255 - 0.406)/0.225
    assert image[:, 0, 0].tolist() == pytest.approx([-1.946656, 0.205182, 2.552854], abs=1e-5)


def test_nearest_upsampling_of_mask_and_ignore() -> None:
    sample = ClassSample(constant_image(4, 4, (0, 0, 0)), MASK_4, IGNORE_4)
    _, mask, ignore = sample_to_tensors(sample, resize_transform(8))
    expected_mask = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 0, 0, 1, 1],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    expected_ignore = torch.zeros(8, 8, dtype=torch.bool)
    expected_ignore[0:2, 0:4] = True
    expected_ignore[6:8, 6:8] = True
    assert torch.equal(mask, expected_mask)
    assert torch.equal(ignore, expected_ignore)
    # the same, written as "each pixel becomes a 2x2 block", with ignore taking precedence
    assert torch.equal(ignore, torch.from_numpy(upsample2(IGNORE_4)))
    assert torch.equal(mask.bool(), torch.from_numpy(upsample2(MASK_4 & ~IGNORE_4)))


def test_nearest_downsampling_picks_pixels_without_blending() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((16, 16)) < 0.5
    ignore = rng.random((16, 16)) < 0.2
    sample = ClassSample(constant_image(16, 16, (9, 9, 9)), mask, ignore)
    _, out_mask, out_ignore = sample_to_tensors(sample, resize_transform(8))
    # torch "nearest" takes source pixel floor(2 * i): the even rows and columns
    assert torch.equal(out_ignore, torch.from_numpy(ignore[::2, ::2]))
    assert torch.equal(out_mask.bool(), torch.from_numpy((mask & ~ignore)[::2, ::2]))


@pytest.mark.parametrize(("height", "width", "size"), [(16, 16, 8), (5, 9, 13), (30, 7, 11)])
def test_mask_stays_binary_and_never_overlaps_ignore(height: int, width: int, size: int) -> None:
    rng = np.random.default_rng(height * width)
    mask = rng.random((height, width)) < 0.5
    ignore = rng.random((height, width)) < 0.3
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out_image, out_mask, out_ignore = sample_to_tensors(
        ClassSample(image, mask, ignore), resize_transform(size)
    )
    assert out_image.shape == (3, size, size)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert not (out_mask.bool() & out_ignore).any()
    assert out_mask.any() and out_ignore.any() and not (out_mask.bool() | out_ignore).all()


def test_sample_arrays_are_not_modified() -> None:
    image = constant_image(4, 4, (10, 20, 30))
    mask, ignore = MASK_4.copy(), IGNORE_4.copy()
    sample_to_tensors(ClassSample(image, mask, ignore), v2.RandomHorizontalFlip(p=1.0))
    assert (image == constant_image(4, 4, (10, 20, 30))).all()
    assert (mask == MASK_4).all() and (ignore == IGNORE_4).all()


def test_a_horizontal_flip_flips_image_mask_and_ignore() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[..., 0] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10  # red = 10 * (4r + c)
    out_image, mask, ignore = sample_to_tensors(
        ClassSample(image, MASK_4, IGNORE_4), v2.RandomHorizontalFlip(p=1.0)
    )
    assert torch.equal(mask.bool(), torch.from_numpy((MASK_4 & ~IGNORE_4)[:, ::-1].copy()))
    assert torch.equal(ignore, torch.from_numpy(IGNORE_4[:, ::-1].copy()))
    red = (np.arange(16).reshape(4, 4)[:, ::-1] * 10 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(out_image[0], torch.from_numpy(red).float(), atol=1e-5)


# ---- augmentation -----------------------------------------------------------------------

AUG_SOURCE, AUG_SIZE = 32, 64  # crops are at most 32 px, so the output is always upsampled


def mask_is_the_image() -> ClassSample:
    """Foreground = left half minus a hole; the image is white exactly on the foreground.

    Every crop of RandomResizedCrop(scale ≥ 0.5) is ≥ 19 px wide, so it always holds both
    halves: the foreground is on the left unless the crop was flipped.
    """
    mask = np.zeros((AUG_SOURCE, AUG_SOURCE), dtype=bool)
    mask[:, :16] = True
    mask[4:10, 4:10] = False
    ignore = np.zeros_like(mask)
    ignore[20:26, 20:26] = True  # on the background, where the image is black
    image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)
    return ClassSample(image, mask, ignore)


def interior(mask: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels whose (2r+1)² neighbourhood is all foreground / all background."""
    x = mask[None, None].float()
    size = 2 * radius + 1
    all_fg = -F.max_pool2d(-x, size, stride=1, padding=radius)
    any_fg = F.max_pool2d(x, size, stride=1, padding=radius)
    return all_fg[0, 0] == 1, any_fg[0, 0] == 0


def augment(seed: int, transform: v2.Transform | None = None) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)
    return sample_to_tensors(mask_is_the_image(), transform or augment_transform(AUG_SIZE))


def test_augment_output_shapes() -> None:
    image, mask, ignore = augment(0)
    assert image.shape == (3, AUG_SIZE, AUG_SIZE)
    assert mask.shape == ignore.shape == (AUG_SIZE, AUG_SIZE)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_augment_is_deterministic_under_a_fixed_torch_seed() -> None:
    first, second = augment(7), augment(7)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    others = [augment(seed) for seed in range(3)]
    assert any(not torch.equal(o[1], first[1]) for o in others)


@pytest.mark.parametrize("seed", range(12))
def test_augment_moves_image_and_mask_together(seed: int) -> None:
    image, mask, ignore = augment(seed)
    assert not (mask.bool() & ignore).any()
    # bilinear blur of the image reaches < 4 output px from an edge of the (nearest) mask;
    # colour jitter is global, so away from edges the image is one colour on the
    # foreground and one on the background, and brightness/contrast in [0.7, 1.3]
    # keep white at least 0.49 * 255 above black.
    fg, bg = interior(mask, radius=4)
    assert fg.sum() > 100 and bg.sum() > 100
    red = image[0]
    assert torch.allclose(red[fg], red[fg][0]) and torch.allclose(red[bg], red[bg][0])
    gap = (red[fg][0] - red[bg][0]) * IMAGENET_STD[0] * 255
    assert gap > 0.49 * 255 - 1
    # the ignore block lies on the background: no ignore pixel is inside the foreground
    assert not (ignore & fg).any()


def test_augment_geometry_is_the_same_as_without_colour_jitter() -> None:
    """RandomResizedCrop and the flip draw first; jitter does not change the geometry."""
    geometry = v2.Compose(
        [
            v2.RandomResizedCrop((AUG_SIZE, AUG_SIZE), scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )
    for seed in range(8):
        _, mask, ignore = augment(seed)
        plain_image, plain_mask, plain_ignore = augment(seed, geometry)
        assert torch.equal(mask, plain_mask) and torch.equal(ignore, plain_ignore)
        # without jitter the image is exactly white on interior foreground, black on background
        fg, bg = interior(plain_mask, radius=4)
        white, black = ((v - IMAGENET_MEAN[0]) / IMAGENET_STD[0] for v in (1.0, 0.0))
        assert torch.allclose(plain_image[0][fg], torch.tensor(white), atol=1e-5)
        assert torch.allclose(plain_image[0][bg], torch.tensor(black), atol=1e-5)


def test_augment_flips_image_and_mask_together() -> None:
    flipped = []
    for seed in range(20):
        image, mask, _ = augment(seed)
        half = AUG_SIZE // 2
        right_heavy = mask[:, half:].mean() > mask[:, :half].mean()
        bright = image[0] > image[0].mean()
        assert right_heavy == (bright[:, half:].float().mean() > bright[:, :half].float().mean())
        flipped.append(bool(right_heavy))
    # the foreground starts on the left: a flip moves it to the right, in both tensors
    assert 3 <= sum(flipped) <= 17
