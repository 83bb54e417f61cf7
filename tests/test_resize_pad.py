"""``--resize pad``: aspect ratio kept, the padding ignored in scores and cut off before a
prediction goes back to an image's own size; checked by hand on tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imagefiles import save, scene, support_pair
from test_score_options import ColumnSource, LeftHalfLearner, episodes_per_class
from torchvision import tv_tensors

import fewseg
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.protocol import score_plan_reference
from fewseg.engine.scoring import foreground_prediction
from fewseg.episodes.sample_cache import ResizedSamples
from fewseg.episodes.tensors import LabelledImages, resized_image_key
from fewseg.episodes.transforms import (
    IGNORE_LABEL,
    _label_map,
    letterbox_shape,
    resize_transform,
    unpadded,
)
from fewseg.errors import FewSegError
from fewseg.learners.base import Predictor
from fewseg.refinement.options import InferenceOptions


@pytest.mark.parametrize(
    ("height", "width", "size", "shape"),
    [(300, 400, 400, (300, 400)), (400, 200, 100, (100, 50)), (1, 1000, 100, (1, 100))],
)
def test_the_longer_side_takes_the_size(height: int, width: int, size: int, shape) -> None:
    assert letterbox_shape(height, width, size) == shape


def test_pad_keeps_the_aspect_ratio_and_fills_the_rest() -> None:
    image = torch.arange(2 * 4 * 3, dtype=torch.uint8).reshape(3, 2, 4) * 10
    mask = np.zeros((2, 4), bool)
    mask[:, 0] = True
    padded, labels = resize_transform(4, "pad")(
        tv_tensors.Image(image), _label_map(mask, np.zeros_like(mask))
    )
    assert padded.shape == (3, 4, 4) and labels.shape == (1, 4, 4)
    assert torch.equal(padded[:, :2], image)  # 2x4 is already 4 wide: copied as it is
    assert padded[:, 2:].flatten(1).unique(dim=1).flatten().tolist() == [124, 116, 104]
    assert labels[0, :2].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert (labels[0, 2:] == IGNORE_LABEL).all()
    assert torch.equal(unpadded(padded, 2, 4), image)
    with pytest.raises(ValueError, match="resize mode"):
        resize_transform(4, "crop")
    with pytest.raises(FewSegError, match="resize must be one of squash, pad"):
        InferenceOptions(resize="crop")


def test_padded_and_squashed_images_are_kept_and_named_apart() -> None:
    source = ColumnSource()
    samples = ResizedSamples(source)
    squashed = samples.load("w1", 0, 2)
    padded = samples.load("w1", 0, 2, "pad")
    assert squashed[2].tolist() == [[False, False], [False, False]]
    assert padded[2].tolist() == [[False, False], [True, True]]  # the padded row: ignored
    assert samples.load("w1", 0, 2, "pad")[0] is padded[0]  # memoised per mode
    keys = {resized_image_key(source, "w1", 2, mode) for mode in ("squash", "pad")}
    assert len(keys) == 2  # cached features of one cannot stand for the other


class PadMarkingLearner(LeftHalfLearner):
    """LeftHalfLearner's log-odds, and +1 wherever the query shows the padding colour
    (normalised to about 0; the test images are black)."""

    name = "pad-marking"

    def adapt(self, support: LabelledImages) -> Predictor:
        left_half = super().adapt(support)

        def predict(images: torch.Tensor) -> torch.Tensor:
            logits = left_half(images)
            logits[(images[:, :1] > -1)] = 1
            return logits

        return predict


def run(score_at: str, resize: str, reference: bool = False):
    settings = EvaluationSettings(
        "all",
        1,
        12,
        2,
        progress=False,
        score_at=score_at,
        inference=InferenceOptions(resize=resize, edges="none"),
    )
    scorer = score_plan_reference if reference else None
    return evaluate(PadMarkingLearner(), ColumnSource(), "columns", settings, [0], scorer=scorer)


def test_padding_is_ignored_at_the_evaluation_size_and_cut_off_at_the_original() -> None:
    assert episodes_per_class(12)["wide"] > 0
    # squashed, the 2x4 wide images have no padding: the scores of test_score_options
    assert run("resized", "squash").per_class == {"wide": 100.0, "square": 100.0}
    assert run("original", "squash").per_class == {"wide": 50.0, "square": 100.0}
    # padded, a wide image is row 0 of its 2x2 square (mask: column 0), row 1 padding that
    # the learner marks as foreground: ignored at 2x2 ...
    assert run("resized", "pad").per_class == {"wide": 100.0, "square": 100.0}
    # ... and cut off before the logits of row 0, (1, -1), go to 2x4: (1, 1/2, -1/2, -1)
    # in both rows, columns 0-1 predicted against column 0: IoU 2/4. Not cut off, row 1
    # would be all foreground: IoU 2/6.
    original = run("original", "pad")
    assert original.per_class == {"wide": 50.0, "square": 100.0}
    reference = run("original", "pad", reference=True)
    assert (reference.per_class, reference.fbiou) == (original.per_class, original.fbiou)


def test_the_prediction_at_an_images_own_size_is_cut_from_its_padded_square() -> None:
    logits = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]]])  # row 1: the padding of a 2x4 image
    cut = foreground_prediction(logits, (2, 4), "pad")[0]
    assert cut.tolist() == [[True, True, False, False]] * 2
    kept = foreground_prediction(logits, (2, 4))[0]
    assert kept[1].all()


def test_the_api_segments_padded_queries_at_their_own_size(tmp_path: Path) -> None:
    image, mask = support_pair(tmp_path)
    wide = save(tmp_path / "wide.jpg", scene(40, 70, (10, 20, 30, 50)))
    tall = save(tmp_path / "tall.png", scene(70, 30, (20, 5, 50, 25)))
    model = fewseg.load("baseline", device="cpu", size=64, inference=InferenceOptions(resize="pad"))
    segment = model.adapt([image], [mask])
    masks = segment([wide, tall])
    assert [m.shape for m in masks] == [(40, 70), (70, 30)]
    assert masks[0][20, 35] and not masks[0][2, 2] and not masks[0][38, 68]
    assert masks[1][35, 15] and not masks[1][2, 2] and not masks[1][68, 28]
