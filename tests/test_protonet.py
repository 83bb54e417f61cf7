"""ProtoNet (PANet-style) against hand computations of its pipeline and losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners import LEARNERS
from fewseg.learners.protonet import ProtoNet, ProtoNetOptions
from fewseg.learners.prototypes import cosine_logits, masked_average_pool, shot_prototypes
from fewseg.models.backbones import Backbone, MobileNetV2Features

RED, BLUE = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])


class Identity(Backbone):
    out_channels, stride = 3, 1

    def __init__(self) -> None:
        super().__init__(frozen=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


class Pool(Backbone):
    """Stride-2 average pooling: a frozen encoder whose features are coarser than the image."""

    out_channels, stride = 3, 2

    def __init__(self) -> None:
        super().__init__(frozen=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 2)


def identity_neck(learner: ProtoNet) -> None:
    """Set the neck to copy its 3 (non-negative) input channels into the first 3 of hidden."""
    first, _, last = learner.encoder.neck
    with torch.no_grad():
        first.weight.zero_()
        first.bias.zero_()
        for c in range(3):
            first.weight[c, c, 1, 1] = 1.0
        last.weight.copy_(torch.eye(last.out_channels)[:, :, None, None])
        last.bias.zero_()


def painted(mask: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), inside[:, None, None], outside[:, None, None])


def red_over_blue_support(size: int = 4) -> LabelledImages:
    mask = torch.zeros(size, size)
    mask[: size // 2] = 1
    no_ignore = torch.zeros(1, size, size, dtype=torch.bool)
    return LabelledImages(painted(mask, RED, BLUE)[None], mask[None], no_ignore)


def random_episode(generator: torch.Generator, shots: int, size: int) -> EpisodeTensors:
    """A bright square on noise per image; the first support image has ignored pixels."""

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(size, size)
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        mask[top : top + size // 2, left : left + size // 2] = 1
        image = torch.randn(3, size, size, generator=generator) * 0.3 + 1.5 * mask
        return image, mask

    support = [sample() for _ in range(shots)]
    ignore = torch.zeros(shots, size, size, dtype=torch.bool)
    ignore[0, :3] = True
    query_image, query_mask = sample()
    query_ignore = torch.zeros(size, size, dtype=torch.bool)
    query_ignore[-2:] = True
    images, masks = (torch.stack(x) for x in zip(*support, strict=True))
    query = LabelledImages(query_image[None], query_mask[None], query_ignore[None])
    return EpisodeTensors(0, LabelledImages(images, masks, ignore), query)


def tiny_config(**overrides: object) -> ProtoNetOptions:
    return ProtoNetOptions(backbone="convnet", hidden=8, **overrides)  # type: ignore[arg-type]


def test_registered_with_settings() -> None:
    learner = LEARNERS.get("protonet")(tiny_config())
    assert isinstance(learner, ProtoNet)
    settings = learner.settings()
    assert settings["backbone"] == "convnet"
    assert settings["backbone_weights"] == "random"
    assert settings["feature_stride"] == 8
    assert learner.scale.item() == pytest.approx(20.0)


@pytest.mark.parametrize("scale_init", [0.0, -1.0])
def test_rejects_a_non_positive_scale(scale_init: float) -> None:
    with pytest.raises(FewSegError, match="scale_init"):
        ProtoNet(tiny_config(scale_init=scale_init))


def test_query_pixels_get_the_scaled_cosine_to_each_prototype() -> None:
    learner = ProtoNet(tiny_config(scale_init=10.0), Identity())
    identity_neck(learner)
    query = torch.zeros(3, 4, 4)
    query[:, :, :2] = BLUE[:, None, None]
    query[:, :, 2] = 0.5 * RED[:, None]
    query[:, :, 3] = (RED + BLUE)[:, None]
    logits = learner.adapt(red_over_blue_support())(query[None])
    # prototypes: background = blue, foreground = red
    expected = torch.zeros(1, 2, 4, 4)
    expected[0, 0, :, :2] = 10.0
    expected[0, 1, :, 2] = 10.0
    expected[0, :, :, 3] = 10.0 / math.sqrt(2)
    # predictions are the foreground logit against background 0: l1 - l0
    assert logits.shape == (1, 1, 4, 4)
    torch.testing.assert_close(logits[:, 0], expected[:, 1] - expected[:, 0])


def test_prediction_is_the_pipeline_at_input_resolution() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(tiny_config(scale_init=7.0), Pool())
    generator = torch.Generator().manual_seed(1)
    support = random_episode(generator, shots=2, size=16).support
    queries = torch.randn(2, 3, 16, 16, generator=generator)
    logits = learner.adapt(support)(queries)
    with torch.no_grad():
        prototypes = shot_prototypes(
            learner.encoder.neck(F.avg_pool2d(support.images, 2)), support.masks, support.ignore
        )
        coarse = cosine_logits(learner.encoder.neck(F.avg_pool2d(queries, 2)), prototypes, 7.0)
    assert logits.shape == (2, 1, 16, 16)
    resized = F.interpolate(coarse, (16, 16), mode="bilinear")
    torch.testing.assert_close(logits[:, 0], resized[:, 1] - resized[:, 0])
    torch.testing.assert_close(logits[:, 0].sigmoid(), resized.softmax(dim=1)[:, 1])


def test_scale_is_learnable_and_stays_positive() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(tiny_config())
    learner.meta_gradients([random_episode(torch.Generator().manual_seed(0), 1, 24)])
    assert learner.log_scale.grad is not None and learner.log_scale.grad.item() != 0.0
    assert any(p is learner.log_scale for p in learner.outer_parameters())
    learner.log_scale.grad.fill_(1.0)
    torch.optim.SGD([learner.log_scale], lr=100.0).step()  # a huge step downwards
    assert learner.scale.item() > 0.0


def test_logits_scale_linearly_with_the_scale() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(tiny_config(scale_init=4.0))
    episode = random_episode(torch.Generator().manual_seed(2), 2, 24)
    query = episode.query.images
    before = learner.adapt(episode.support)(query)
    with torch.no_grad():
        learner.log_scale.fill_(math.log(12.0))
    torch.testing.assert_close(learner.adapt(episode.support)(query), 3.0 * before)


def hand_alignment_term(learner: ProtoNet, episode: EpisodeTensors) -> tuple[float, int]:
    """PAR term by hand: (mean over shots of support CE, predicted query foreground cells)."""
    support = episode.support
    with torch.no_grad():
        features = learner.encoder(torch.cat([support.images, episode.query.images]))
        support_features, query_features = features[:-1], features[-1:]
        scale = learner.log_scale.exp()
        prototypes = shot_prototypes(support_features, support.masks, support.ignore)
        predicted = cosine_logits(query_features, prototypes, scale).argmax(dim=1)
        one_hot = torch.stack([predicted == 0, predicted == 1], dim=1).float()
        query_prototypes = masked_average_pool(query_features, one_hot)[0]
        logits = F.interpolate(
            cosine_logits(support_features, query_prototypes, scale),
            support.images.shape[-2:],
            mode="bilinear",
        )
        targets = support.masks.long().masked_fill(support.ignore, -100)
        per_shot = [F.cross_entropy(logits[k : k + 1], targets[k : k + 1]) for k in range(2)]
    return sum(per_shot).item() / 2, int(predicted.sum())


def test_alignment_adds_its_weight_times_the_hand_computed_term() -> None:
    torch.manual_seed(0)
    with_par = ProtoNet(tiny_config(alignment_weight=0.5))
    without_par = ProtoNet(tiny_config(alignment_weight=0.0))
    without_par.load_state_dict(with_par.state_dict())
    generator = torch.Generator().manual_seed(3)
    episodes = [random_episode(generator, shots=2, size=24) for _ in range(2)]
    terms, foreground_cells = zip(
        *(hand_alignment_term(with_par, e) for e in episodes), strict=True
    )
    assert all(0 < n < 9 for n in foreground_cells)  # the term is not skipped, nor trivial
    on, off = with_par.meta_gradients(episodes), without_par.meta_gradients(episodes)
    alignment = sum(terms) / 2
    assert on["alignment_loss"] == pytest.approx(alignment, rel=1e-5)
    assert on["query_loss"] == pytest.approx(off["query_loss"], rel=1e-6)
    assert off["alignment_loss"] == 0.0
    assert on["loss"] - off["loss"] == pytest.approx(0.5 * alignment, rel=1e-4)


def test_alignment_is_skipped_when_the_query_shows_no_foreground() -> None:
    learner = ProtoNet(tiny_config(alignment_weight=1.0), Identity())
    identity_neck(learner)
    query = BLUE[:, None, None].expand(3, 4, 4).clone()
    no_ignore = torch.zeros(4, 4, dtype=torch.bool)
    episode = EpisodeTensors(
        0,
        red_over_blue_support(),
        LabelledImages(query[None], torch.zeros(1, 4, 4), no_ignore[None]),
    )
    metrics = learner.meta_gradients([episode])
    assert metrics["alignment_loss"] == 0.0
    assert metrics["loss"] == metrics["query_loss"]


def test_gradient_reaches_the_neck_but_not_a_frozen_encoder() -> None:
    torch.manual_seed(0)
    encoder = MobileNetV2Features(pretrained=False, frozen=True)
    learner = ProtoNet(ProtoNetOptions(hidden=8, pretrained=False), encoder)
    learner.train()
    episode = random_episode(torch.Generator().manual_seed(4), 1, 32)
    learner.meta_gradients([episode])
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in learner.encoder.neck.parameters()
    )
    assert {id(p) for p in learner.outer_parameters()} == {
        id(p) for p in [*learner.encoder.neck.parameters(), learner.log_scale]
    }


def test_a_trainable_encoder_gets_a_gradient() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(tiny_config())
    learner.meta_gradients([random_episode(torch.Generator().manual_seed(5), 1, 24)])
    assert all(p.grad is not None for p in learner.encoder.parameters())
    assert learner.encoder.backbone.blocks[0][0].weight.grad.abs().sum() > 0


def test_frozen_mobilenet_batchnorm_statistics_do_not_change() -> None:
    torch.manual_seed(0)
    encoder = MobileNetV2Features(pretrained=False, frozen=True)
    learner = ProtoNet(ProtoNetOptions(hidden=8, pretrained=False), encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    learner.train()
    assert not encoder.training
    generator = torch.Generator().manual_seed(6)
    episodes = [random_episode(generator, 2, 32) for _ in range(2)]
    learner.meta_gradients(episodes)
    learner.adapt(episodes[0].support)(episodes[1].query.images * 3.0 + 1.0)
    after = encoder.state_dict()
    assert any("running_mean" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adam_steps_reduce_the_loss_of_a_fixed_batch(
    synthetic_batch: list[EpisodeTensors],
) -> None:
    torch.manual_seed(0)
    learner = ProtoNet(tiny_config(alignment_weight=1.0))
    learner.train()
    optimizer = learner.make_optimizer()
    losses = []
    for _ in range(31):
        optimizer.zero_grad()
        losses.append(learner.meta_gradients(synthetic_batch)["loss"])
        optimizer.step()
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0]
