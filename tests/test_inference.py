"""Test-time augmentation and the Dieleman viewpoints: the symmetries they rely on, checked on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gzmorph import tree
from gzmorph.errors import GzmorphError
from gzmorph.training.augment import rotate
from gzmorph.inference.tta import check_tta, dihedral_views, predict_array, tta_views
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
    with pytest.raises(GzmorphError, match="dihedral"):
        dihedral_views(x, 3)


def test_rotate_by_a_quarter_turn_is_the_exact_quarter_turn():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(rotate(x, 0), x, atol=1e-6)
    turned = rotate(x, 90)
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5) for k in (1, 3))
    assert not torch.allclose(rotate(x, 45), x, atol=1e-2)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_tta_views_start_with_the_dihedral_ones_and_are_all_different(n):
    x = torch.rand(1, 3, 16, 16)
    views = list(tta_views(x, n))
    assert len(views) == n
    for a, b in zip(views, dihedral_views(x, min(n, 8))):
        assert torch.equal(a, b)
    assert len({tuple(v.flatten().tolist()) for v in views}) == n


def test_unknown_tta_is_one_clear_error():
    for bad in (0, 3, 12, 64):
        with pytest.raises(GzmorphError, match="--tta must be one of 1, 2, 4, 8, 16, 32"):
            check_tta(bad)


@pytest.mark.parametrize("tta", [8, 16, 32])
def test_tta_predictions_are_invariant_to_the_symmetries_and_tree_consistent(tta):
    torch.manual_seed(0)
    model = create_model("gznet")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    pred = predict_array(model, pixels, batch_size=2, tta=tta)
    assert pred.shape == (3, 37) and pred.dtype == np.float32
    assert not tree.tree_violations(pred, tolerance=1e-4).any()
    # The average of a turned/mirrored image is the same average: with 16 or 32 views too, because a quarter turn
    # or a mirror maps the set of in-between turns onto itself (a mirrored 22.5-degree turn is a 67.5-degree one).
    turned = np.ascontiguousarray(np.rot90(pixels[:, :, ::-1], 1, axes=(1, 2)))
    assert np.allclose(predict_array(model, turned, tta=tta), pred, atol=1e-5)
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
