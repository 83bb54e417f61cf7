import pytest
import torch

from fewseg.models.backbones import BACKBONES


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v2_s8", "efficientnet_lite2"])
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


BACKBONE_NAMES = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_the_declared_block_strides_are_those_of_the_network(name: str) -> None:
    """``STRIDES`` (each block's output stride) and ``PER_IMAGE_BLOCKS`` (the blocks whose
    input stride is below 8) as the blocks give them on a 64x64 image."""
    kind = type(BACKBONES.get(name)(pretrained=False, frozen=True))
    every_block = kind(pretrained=False, taps=(len(kind.STRIDES) - 1,)).eval()
    x, strides = torch.zeros(1, 3, 64, 64), []
    with torch.no_grad():
        for block in every_block.blocks:
            x = block(x)
            strides.append(64 // x.shape[-1])
    assert tuple(strides) == kind.STRIDES
    assert sum(s < 8 for s in (1, *strides[:-1])) == kind.PER_IMAGE_BLOCKS


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_a_pyramid_gives_each_tap_at_its_own_stride_and_equals_the_concatenation(
    name: str,
) -> None:
    import torch.nn.functional as F

    from fewseg.models import efficientnet
    from fewseg.models.backbones import MobileNetV2Features

    kind = {
        "mobilenet_v2": MobileNetV2Features,
        "efficientnet_lite0": efficientnet.EfficientNetLite0Features,
        "efficientnet_lite1": efficientnet.EfficientNetLite1Features,
        "efficientnet_lite2": efficientnet.EfficientNetLite2Features,
    }
    taps = {"mobilenet_v2": (3, 6, 13), "efficientnet_lite0": (2, 4, 11)}.get(name, (2, 5, 15))
    torch.manual_seed(0)
    pyramid = kind[name](pretrained=False, taps=taps, pyramid=True).eval()
    joined = kind[name](pretrained=False, taps=taps).eval()
    joined.load_state_dict(pyramid.state_dict())
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        levels = pyramid(images)
        flat = joined(images)
    assert [level.shape[1] for level in levels] == list(pyramid.tap_channels)
    assert [64 // level.shape[-2] for level in levels] == list(pyramid.tap_strides) == [4, 8, 16]
    size = levels[0].shape[-2:]
    resized = [
        F.interpolate(x, size, mode="bilinear") if x.shape[-2:] != size else x for x in levels
    ]
    assert torch.equal(torch.cat(resized, dim=1), flat)


COCO_MINI = (
    __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared/data/coco-mini"
)


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="needs ../shared/data/coco-mini")
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_each_backbone_gets_the_input_normalisation_its_weights_were_trained_with(
    name: str,
) -> None:
    """On real photos a backbone's first BatchNorm sees the variances it was trained with
    when the images are prepared for it (MobileNetV2: ImageNet mean/std, fewseg's own;
    EfficientNet-Lite0/1/2: TensorFlow's (x - 127) / 128), and not under the other scaling."""
    import numpy as np
    from PIL import Image

    from fewseg.data.spec import open_source
    from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD

    source = open_source(f"coco:{COCO_MINI}")
    photos = [source.load(i, 0).image for i in source.images_of(0)[:24]]  # person
    pixels = (
        torch.stack(
            [torch.from_numpy(np.array(Image.fromarray(p).resize((160, 160)))) for p in photos]
        )
        .permute(0, 3, 1, 2)
        .float()
    )
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    imagenet = (pixels / 255 - mean) / std  # what fewseg's loaders give a backbone
    tensorflow = (pixels - 127) / 128
    backbone = BACKBONES.get(name)(pretrained=True, frozen=True)
    conv, norm = backbone.blocks[0][0], backbone.blocks[0][1]

    def variance_mismatch(inputs: torch.Tensor) -> float:
        """Mean |log(batch variance / running variance)| after the first convolution."""
        with torch.no_grad():
            variance = conv(inputs).var(dim=(0, 2, 3))
        kept = norm.running_var > 1e-4  # channels that never fired have none
        return float((variance / norm.running_var)[kept].log().abs().mean())

    other = tensorflow if name == "mobilenet_v2" else imagenet
    assert variance_mismatch(backbone.prepare(imagenet)) < 0.3 < 1.0 < variance_mismatch(other)


def test_another_variants_weights_file_gets_a_one_line_error_naming_it() -> None:
    import re

    from fewseg.errors import FewSegError
    from fewseg.models.efficientnet import lite_weights_file

    lite0 = lite_weights_file("lite0")
    with pytest.raises(FewSegError, match=rf"^{re.escape(lite0)}: not EfficientNet-Lite1 weights$"):
        BACKBONES.get("efficientnet_lite1")(weights_path=lite0)
    with pytest.raises(FewSegError, match=r"missing\.pth: weights file not found"):
        BACKBONES.get("efficientnet_lite2")(weights_path="missing.pth")


def test_each_variants_local_weights_file_gives_the_packaged_weights() -> None:
    from fewseg.models.efficientnet import lite_weights_file

    for name, variant in (("efficientnet_lite1", "lite1"), ("efficientnet_lite2", "lite2")):
        packaged = BACKBONES.get(name)(pretrained=True)
        local = BACKBONES.get(name)(weights_path=lite_weights_file(variant))
        assert local.weights_source.endswith(".pth") and packaged.weights_source == "imagenet"
        for a, b in zip(packaged.state_dict().values(), local.state_dict().values(), strict=True):
            assert torch.equal(a, b)
