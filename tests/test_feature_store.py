"""The engine's feature store: each named image encoded once, exactly as the encoder would."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch

from fewseg.engine.feature_disk import FeatureDisk, encoder_identity
from fewseg.engine.features import FeatureStore, attached, frozen_encoders, training_stores
from fewseg.episodes.image_keys import name_images
from fewseg.models.encoder import Encoder


class Doubling(Encoder):
    """features = 2 · image, pooled 2x; counts the images it computes."""

    out_channels, stride = 3, 2

    def __init__(self, frozen: bool = True, pyramid: bool = False) -> None:
        super().__init__(frozen)
        self.computed: list[int] = []
        self.pyramid = pyramid
        self.release: threading.Event | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.release is not None:
            assert self.release.wait(timeout=10)
        self.computed.append(len(images))
        pooled = torch.nn.functional.avg_pool2d(2 * images, 2)
        return (pooled, pooled.sum(dim=1, keepdim=True)) if self.pyramid else pooled


def images(keys: list[str], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return name_images(torch.randn(len(keys), 3, 4, 4, generator=g), keys)


def test_named_images_are_computed_once_and_answered_exactly() -> None:
    encoder, store = Doubling(), FeatureStore()
    first = images(["a", "b"])
    with attached({encoder: store}):
        assert torch.equal(encoder(first), encoder.compute(first))
        encoder.computed.clear()
        again = name_images(first[[1, 0]].clone(), ["b", "a"])
        mixed = name_images(torch.cat([first[:1], images(["c"], 1)]), ["a", "c"])
        assert torch.equal(encoder(again), encoder.compute(again))
        assert torch.equal(encoder(mixed)[1], encoder.compute(mixed)[1])
        unnamed = torch.randn(2, 3, 4, 4)
        encoder(unnamed)
        encoder(unnamed)
    assert encoder.computed == [2, 1, 2, 2, 2]  # only c was new; unnamed ones every time
    assert (store.hits, store.misses, len(store)) == (3, 3, 3)
    assert encoder._feature_store is None  # detached after


def test_feature_pyramids_are_kept_per_image() -> None:
    encoder, store = Doubling(pyramid=True), FeatureStore()
    batch = images(["a", "b", "c"])
    with attached({encoder: store}):
        first = encoder(batch)
        again = encoder(name_images(batch[1:].clone(), ["b", "c"]))
    assert isinstance(again, tuple) and len(again) == 2
    assert torch.equal(again[0], first[0][1:]) and torch.equal(again[1], first[1][1:])
    assert encoder.computed == [3]


def test_beyond_its_budget_the_least_recently_used_go() -> None:
    encoder = Doubling()
    one_image = 3 * 2 * 2 * 4  # bytes of one image's features
    store = FeatureStore(max_bytes=2 * one_image)
    with attached({encoder: store}):
        for key in ["a", "b", "a", "c", "a", "b"]:
            encoder(images([key]))
    assert encoder.computed == [1, 1, 1, 1]  # b was evicted by c, a was kept
    assert len(store) == 2


def test_encoding_ahead_on_threads_waits_where_the_learner_asks() -> None:
    encoder, store = Doubling(), FeatureStore()
    encoder.release = threading.Event()
    batch = images(["a", "b"])
    with store, attached({encoder: store}):
        store.start_encoders(2)
        store.encode_ahead(encoder, batch)
        store.encode_ahead(encoder, batch)  # already being computed: not again
        encoder.release.set()
        features = encoder(batch)  # waits for the encoder threads
    assert encoder.computed == [1, 1]
    assert torch.equal(features, encoder.compute(batch))


def test_an_error_reaches_the_caller_and_nothing_is_kept() -> None:
    class Failing(Doubling):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("out of memory")

    encoder, store = Failing(), FeatureStore()
    with attached({encoder: store}), pytest.raises(RuntimeError, match="out of memory"):
        encoder(images(["a"]))
    assert len(store) == 0 and not store._pending


def test_training_stores_go_to_the_outer_frozen_encoders() -> None:
    class Wrapper(Encoder):
        def __init__(self, frozen: bool) -> None:
            super().__init__(frozen)
            self.inner = Doubling(frozen=True)

    module = torch.nn.ModuleList([Wrapper(frozen=False), Wrapper(frozen=True), Doubling(False)])
    found = frozen_encoders(module)
    assert found == [module[0].inner, module[1]]
    assert set(training_stores(module)) == set(found)


def test_a_frozen_encoders_store_lasts_until_its_weights_are_replaced() -> None:
    from fewseg.engine.features import frozen_store

    encoder = Doubling()
    encoder.scale = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    store = frozen_store(encoder)
    assert frozen_store(encoder) is store  # across evaluations and training
    encoder.load_state_dict(encoder.state_dict())
    assert frozen_store(encoder) is not store
    replaced = frozen_store(encoder)
    encoder.double()
    assert frozen_store(encoder) is not replaced


def test_moving_an_encoder_where_it_is_keeps_its_store() -> None:
    from fewseg.engine.features import frozen_store

    encoder = Doubling()
    encoder.scale = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    store = frozen_store(encoder)
    encoder.to("cpu").float()
    assert frozen_store(encoder) is store
    encoder.double()
    assert frozen_store(encoder) is not store


def test_an_encoders_output_function_is_kept_and_stored_rows_keep_their_layout() -> None:
    """``Encoder.output`` runs inside compute, so the store keeps its result; a batch of
    stored channels-last rows is channels-last too (and equal to the rows stacked)."""
    encoder, store = Doubling(), FeatureStore()
    encoder.output = lambda features: (features + 1).contiguous(memory_format=torch.channels_last)
    batch = images(["a", "b", "c"])
    with attached({encoder: store}):
        encoder(batch)
        again = encoder(name_images(batch[[2, 1]].clone(), ["c", "b"]))
    assert encoder.computed == [3]
    expected = torch.nn.functional.avg_pool2d(2 * batch[[2, 1]], 2) + 1
    assert torch.equal(again, expected)
    assert again.is_contiguous(memory_format=torch.channels_last)


def test_stores_sharing_a_disk_compute_each_image_once_and_read_it_back_exactly(
    tmp_path: Path,
) -> None:
    """Two processes' copies of one frozen encoder (here two stores and a copy of the
    encoder): what one computed, the other reads from the disk, bit for bit and in the
    same layout, through a learner's call and through the encoder threads alike."""
    disk = FeatureDisk(tmp_path)
    first, second = Doubling(pyramid=True), Doubling(pyramid=True)
    first.output = second.output = _channels_last_pyramid
    batch = images(["a", "b", "c"])
    with attached({first: FeatureStore(disk=disk)}):
        expected = first(batch)
    store, ahead = FeatureStore(disk=disk), FeatureStore(disk=disk)
    with attached({second: store}):
        answered = second(name_images(batch.clone(), ["a", "b", "c"]))
    with ahead:
        ahead.start_encoders(1)
        ahead.encode_ahead(second, name_images(batch[:1].clone(), ["a"]))
    assert second.computed == [] and (store.disk_hits, ahead.disk_hits) == (3, 1)
    for part, reference in zip(answered, expected, strict=True):
        assert torch.equal(part, reference)
        assert part.is_contiguous(memory_format=torch.channels_last)
    other = Doubling(pyramid=True)  # no output function: another encoder, other files
    with attached({other: FeatureStore(disk=disk)}):
        other(name_images(batch.clone(), ["a", "b", "c"]))
    assert other.computed == [3]


def _channels_last_pyramid(features: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(part.contiguous(memory_format=torch.channels_last) for part in features)


def test_an_encoders_identity_follows_its_weights_and_settings() -> None:
    from fewseg.models.backbones import BACKBONES

    def convnet(**options: object) -> Encoder:
        return BACKBONES.get("convnet")(pretrained=False, weights_path=None, frozen=True)

    torch.manual_seed(0)
    encoder = convnet()
    same = copy.deepcopy(encoder)
    same.weights_version += 5  # counts loads in this process only
    assert encoder_identity(same) == encoder_identity(encoder)
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        next(changed.parameters())[0] += 1
    enlarged = copy.deepcopy(encoder)
    enlarged.enlarge = 1.4
    with_output = copy.deepcopy(encoder)
    with_output.output = _channels_last_pyramid
    others = {encoder_identity(e) for e in (changed, enlarged, with_output)}
    assert len(others) == 3 and encoder_identity(encoder) not in others


def test_a_disk_that_cannot_be_written_only_stops_the_sharing(tmp_path: Path) -> None:
    blocker = tmp_path / "disk"
    blocker.write_text("a file where the folder should be")
    encoder, store = Doubling(), FeatureStore(disk=FeatureDisk(blocker))
    batch = images(["a", "b"])
    with attached({encoder: store}), pytest.warns(UserWarning, match="no longer shared"):
        assert torch.equal(encoder(batch), encoder.compute(batch))
    with attached({encoder: store}):
        assert torch.equal(encoder(batch), encoder.compute(batch))  # from memory, no warning
