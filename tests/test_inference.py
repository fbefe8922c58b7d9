"""Test-time augmentation and the Dieleman viewpoints: the symmetries they rely on, checked on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gzmorph import tree
from gzmorph.errors import GzmorphError
from gzmorph.inference import dihedral_views, predict_array
from gzmorph.models import create_model
from gzmorph.models.dieleman import N_VIEWS, VIEW, ViewpointExtraction


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    views = dihedral_views(x, 8)
    assert len(views) == 8
    flat = {tuple(v[0, 0].flatten().tolist()) for v in views}
    assert len(flat) == 8  # an asymmetric image has 8 different symmetric copies
    assert torch.equal(views[0], x)
    for n in (1, 2, 4):
        assert [torch.equal(a, b) for a, b in zip(dihedral_views(x, n), views)] == [True] * n
    with pytest.raises(GzmorphError, match="--tta"):
        dihedral_views(x, 3)


def test_tta_predictions_are_invariant_to_the_symmetries_and_tree_consistent():
    torch.manual_seed(0)
    model = create_model("gznet")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    pred = predict_array(model, pixels, batch_size=2, tta=8)
    assert pred.shape == (3, 37) and pred.dtype == np.float32
    assert not tree.tree_violations(pred, tolerance=1e-4).any()
    # The 8-view average of a turned/mirrored image is the same average.
    turned = np.ascontiguousarray(np.rot90(pixels[:, :, ::-1], 1, axes=(1, 2)))
    assert np.allclose(predict_array(model, turned, tta=8), pred, atol=1e-5)
    assert not np.allclose(predict_array(model, turned, tta=1), predict_array(model, pixels, tta=1), atol=1e-5)


def test_dieleman_views_put_the_galaxy_centre_in_the_same_corner():
    x = torch.zeros(2, 3, 69, 69)
    x[:, :, 34, 34] = 1.0  # the centre pixel
    views = ViewpointExtraction(69, VIEW)(x)
    assert views.shape == (N_VIEWS * 2, 3, VIEW, VIEW)
    # The centre lands at the same place in every view (the rotated copies spread it over neighbours).
    peaks = {divmod(int(v[0].flatten().argmax()), VIEW) for v in views}
    assert peaks == {(34, 34)}


def test_dieleman_views_of_a_turned_image_are_a_permutation():
    # A quarter turn of the input only reorders the straight views (the 4 corners trade places).
    torch.manual_seed(0)
    x = torch.rand(1, 3, 69, 69)
    ext = ViewpointExtraction(69, VIEW)
    a, b = ext(x)[:4], ext(torch.rot90(x, 1, dims=(-2, -1)))[:4]
    for view in b:
        assert any(torch.equal(view, other) for other in a)


def test_dieleman_small_dense_option():
    model = create_model("dieleman", dense=64)
    out = model(torch.rand(2, 3, 69, 69))
    assert out.shape == (2, 37)
    assert not tree.tree_violations(out.detach().numpy(), tolerance=1e-4).any()
