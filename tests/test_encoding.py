"""Encoder threads: each image handed out once, its features in the learner's cache."""

import threading

import torch

from fewseg.engine.encoding import ParallelEncoding
from fewseg.learners.baseline import PrototypeBaseline
from fewseg.learners.config import LearnerConfig


def test_an_image_met_again_gets_the_same_encoding_and_a_changed_one_a_new_one() -> None:
    torch.manual_seed(0)
    learner = PrototypeBaseline(LearnerConfig(pretrained=False))
    threads: list[str] = []
    learner.backbone.register_forward_hook(
        lambda *_: threads.append(threading.current_thread().name)
    )
    a, b = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    saved = torch.get_num_threads()
    with ParallelEncoding(learner, workers=2) as encoding:
        assert torch.get_num_threads() == 1  # the caller's own operations, on one thread
        first = encoding.submit([a, b])
        again = encoding.submit([b, a])
        assert again == [first[1], first[0]]
        for future in first:
            future.result()
        a.add_(1.0)  # changed in place: encoded again
        changed = encoding.submit([a])[0]
        assert changed is not first[0]
        changed.result()
    assert torch.get_num_threads() == saved
    assert len(threads) == 3 and all(name.startswith("fewseg-encode") for name in threads)
    with torch.no_grad():
        for image in (a, b):  # the cache holds what the backbone computes
            cached = learner.features(image[None])
            torch.testing.assert_close(cached, learner.backbone(image[None]))
    assert len(threads) == 5  # the two reference passes above; the cache lookups hit
