"""Pixel losses on a coarser grid than the image (``loss_size``)."""

import pytest
import torch

from fewseg.errors import FewSegError
from fewseg.learners.losses import foreground_bce
from fewseg.learners.maml import MAML, MAMLOptions
from fewseg.learners.masks import nearest_indices, subsample_masks
from fewseg.models.upsample import bilinear_resize


def test_nearest_indices_pick_the_pixel_under_each_output_centre():
    assert nearest_indices(4, 2, torch.device("cpu")).tolist() == [1, 3]
    assert nearest_indices(6, 4, torch.device("cpu")).tolist() == [0, 2, 3, 5]
    assert nearest_indices(5, 5, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4]


def test_subsample_masks_keeps_the_aspect_and_leaves_small_masks_alone():
    masks = torch.arange(32).reshape(1, 4, 8)
    ignore = masks % 3 == 0
    size, small, small_ignore = subsample_masks(masks, ignore, 4)
    assert size == (2, 4)
    assert small.tolist() == [[[9, 11, 13, 15], [25, 27, 29, 31]]]
    assert torch.equal(small_ignore, small % 3 == 0)
    assert subsample_masks(masks, ignore, 8)[0] == (4, 8)


def test_support_loss_on_the_grid_is_the_loss_of_logits_resized_to_it():
    torch.manual_seed(0)
    learner = MAML(MAMLOptions(backbone="convnet", hidden=8, loss_size=8))
    learner.model.encoder.freeze()
    images = torch.randn(2, 3, 32, 32)
    masks = (torch.rand(2, 32, 32) > 0.6).long()
    ignore = torch.rand(2, 32, 32) > 0.9
    loss = learner.pixel_loss(learner.inputs(images), (32, 32), masks, ignore)
    with torch.no_grad():
        logits = bilinear_resize(learner.model.head(learner.model.encoder(images)), (8, 8))
    rows = torch.tensor([2, 6, 10, 14, 18, 22, 26, 30])
    expected = foreground_bce(logits, masks[:, rows][:, :, rows], ignore[:, rows][:, :, rows])
    assert loss(learner.initial_parameters()).item() == pytest.approx(expected.item(), rel=1e-6)


def test_negative_loss_size_is_refused():
    with pytest.raises(FewSegError, match="loss_size"):
        MAMLOptions(loss_size=-1)
