import pytest
import torch

from fewseg.models.backbones import BACKBONES


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v2_s8"])
def test_early_blocks_one_image_at_a_time_give_the_batched_features_bitwise(name: str) -> None:
    torch.manual_seed(0)
    backbone = BACKBONES.get(name)(pretrained=False, frozen=True).eval()
    images = torch.randn(3, 3, 64, 80)
    with torch.no_grad():
        per_image_early = backbone(images)
    with torch.enable_grad():  # autograd on: one batched pass through every block
        batched = backbone(images)
    assert not batched.requires_grad  # frozen: still no graph
    assert per_image_early.shape == (
        3,
        backbone.out_channels,
        64 // backbone.stride,
        80 // backbone.stride,
    )
    assert torch.equal(per_image_early, batched)


def test_a_tap_among_the_early_blocks_is_gathered_per_image() -> None:
    from fewseg.models.backbones import MobileNetV2Features

    torch.manual_seed(0)
    backbone = MobileNetV2Features(pretrained=False, taps=(3, 6)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone(images)
    with torch.enable_grad():
        assert torch.equal(features, backbone(images))
    assert features.shape == (2, 24 + 32, 16, 16)


def test_early_batch_pixels_group_small_images_with_the_same_features() -> None:
    torch.manual_seed(0)
    backbone = BACKBONES.get("mobilenet_v2")(pretrained=False, frozen=True).eval()
    images = torch.randn(5, 3, 64, 80)
    first_block = backbone._inference.of(backbone.blocks)[0]
    sizes: list[int] = []
    first_block.register_forward_pre_hook(lambda _m, inputs: sizes.append(len(inputs[0])))
    with torch.no_grad():
        grouped = backbone(images, early_batch_pixels=2 * 64 * 80 + 100)
        assert sizes == [2, 2, 1]
        sizes.clear()
        one_by_one = backbone(images)
        assert sizes == [1, 1, 1, 1, 1]
        sizes.clear()
        backbone(images, early_batch_pixels=64 * 80 - 1)  # not one image's worth: one by one
        assert sizes == [1, 1, 1, 1, 1]
    with torch.enable_grad():
        batched = backbone(images)
    assert torch.equal(grouped, batched) and torch.equal(one_by_one, batched)
