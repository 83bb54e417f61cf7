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


def test_small_images_go_through_the_early_blocks_in_groups_with_the_same_features() -> None:
    torch.manual_seed(0)
    backbone = BACKBONES.get("mobilenet_v2")(pretrained=False, frozen=True).eval()
    first_block = backbone._inference.of(backbone.blocks)[0]
    sizes: list[int] = []
    first_block.register_forward_pre_hook(lambda _m, inputs: sizes.append(len(inputs[0])))
    small = torch.randn(9, 3, 96, 96)  # four 96×96 images to a group
    large = torch.randn(3, 3, 200, 200)  # one at a time
    with torch.no_grad():
        grouped = backbone(small)
        assert sizes == [4, 4, 1]
        sizes.clear()
        one_by_one = backbone(large)
        assert sizes == [1, 1, 1]
    with torch.enable_grad():
        assert torch.equal(grouped, backbone(small))
        assert torch.equal(one_by_one, backbone(large))
