"""BatchNorm folded into convolutions: the same function, rebuilt when the weights change."""

import torch
from torch import nn

from fewseg.models.backbones import MobileNetV2Features
from fewseg.models.batchnorm_folding import FoldedInference, folded_copy


def random_batchnorm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    return norm.eval()


def test_folded_copy_by_hand() -> None:
    conv = nn.Conv2d(1, 1, 1, bias=False)
    norm = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(3.0)
        norm.weight.fill_(2.0)
        norm.bias.fill_(1.0)
        norm.running_mean.fill_(4.0)
        norm.running_var.fill_(16.0)
    folded = folded_copy(nn.Sequential(conv, norm))
    assert isinstance(folded[0], nn.Conv2d) and isinstance(folded[1], nn.Identity)
    # (3x - 4) / 4 * 2 + 1 = 1.5x - 1
    assert folded[0].weight.item() == 1.5 and folded[0].bias.item() == -1.0
    assert isinstance(conv.weight, nn.Parameter) and conv.weight.item() == 3.0  # original kept


def test_nested_sequences_fold_and_compute_the_same_function() -> None:
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), random_batchnorm(8), nn.ReLU6()),
        nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), random_batchnorm(4)),
        random_batchnorm(4),  # not after a convolution: kept
    ).eval()
    folded = folded_copy(network)
    kinds = [type(m) for m in folded.modules()]
    assert kinds.count(nn.BatchNorm2d) == 1 and kinds.count(nn.Identity) == 2
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), network(x), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in folded.parameters())


def test_a_frozen_mobilenet_runs_folded_with_its_own_state_unchanged() -> None:
    torch.manual_seed(0)
    backbone = MobileNetV2Features(pretrained=False, frozen=True)
    keys = list(backbone.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        folded = backbone(x)
        backbone.frozen = False  # the plain blocks, as a trainable backbone runs them
        plain = backbone(x)
        backbone.frozen = True
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5)
    assert list(backbone.state_dict()) == keys  # checkpoints are unaffected
    assert not any("_inference" in name for name, _ in backbone.named_modules())


def test_the_folded_copy_follows_loaded_weights_and_casts() -> None:
    torch.manual_seed(0)
    backbone = MobileNetV2Features(pretrained=False, frozen=True)
    other = MobileNetV2Features(pretrained=False, frozen=True)  # other random weights
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)
        backbone.load_state_dict(other.state_dict())
        assert torch.equal(backbone(x), other(x)) and not torch.equal(backbone(x), before)
        double = backbone.double()(x.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), other(x), rtol=1e-4, atol=1e-5)


def test_the_copy_is_built_once_until_invalidated() -> None:
    network = nn.Sequential(nn.Conv2d(1, 1, 1), random_batchnorm(1))
    inference = FoldedInference()
    first = inference.of(network)
    assert inference.of(network) is first
    inference.invalidate()
    assert inference.of(network) is not first
