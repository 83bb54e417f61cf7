"""Suite-wide test settings."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def private_index_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dataset indexes go to a folder of the test session, not to ~/.cache. (Not through
    XDG_CACHE_HOME: torch finds the pretrained weights under it.)"""
    from fewseg.data import coco_index

    folder = tmp_path_factory.mktemp("index-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coco_index, "default_cache_dir", lambda: folder)
        yield


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Tests run torch on one thread: on a shared 2-core machine, two spinning thread pools
    make small operations orders of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_batch() -> list:
    """Four 1-shot episodes of the synthetic dataset's fold-0 meta-train classes at 48x48,
    drawn with numpy seed 0: a fixed meta-batch for the "training lowers the loss" tests.
    Read-only: the tests share it."""
    import numpy as np

    from fewseg.data.spec import open_source
    from fewseg.episodes.sampler import draw_episode
    from fewseg.episodes.tensors import load_episode
    from fewseg.episodes.transforms import resize_transform

    source = open_source("synthetic:images=4")
    classes = source.fold_split("0").train
    rng = np.random.default_rng(0)
    transform = resize_transform(48)
    return [
        load_episode(source, draw_episode(source, classes, 1, rng), transform) for _ in range(4)
    ]
