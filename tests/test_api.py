"""The notebook API: `gzmorph.load_model()` and its DataFrames, from every kind of picture a user holds."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pytest
import torch
from PIL import Image

import gzmorph
from gzmorph import runs
from gzmorph.config import TrainConfig
from gzmorph.models import resolve_recipe
from gzmorph.errors import GzmorphError
from gzmorph.inference import galaxy_model
from gzmorph.tasks import Column, Task

from helpers import make_fake_run, random_image, write_image


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gzmorph.load_model(make_fake_run(tmp_path_factory.mktemp("run") / "run"), precision="fp32")


def test_the_documented_examples_run():
    result = doctest.testmod(galaxy_model, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


def test_files_pil_images_and_arrays_give_the_same_answers(model, tmp_path):
    pixels = random_image(seed=4)
    png = write_image(tmp_path / "77.png", pixels=pixels)
    as_16_bit = pixels.astype(np.uint16) * 257
    table = model.predict([png, Image.open(png), pixels, as_16_bit, pixels[None]], columns="kaggle")
    assert list(table.index) == ["77", 1, 2, 3, 4]  # files by GalaxyID, in-memory pictures by position
    values = table.to_numpy(np.float64)
    assert np.abs(values - values[0]).max() < 1e-6


def test_a_folder_and_ids(model, tmp_path):
    for k in range(3):
        write_image(tmp_path / "f" / f"{10 + k}.jpg", seed=k)
    table = model.predict(tmp_path / "f", tta=2, spread=True)
    assert list(table.index) == ["10", "11", "12"] and table.index.name == "GalaxyID"
    assert "bar_yes_fraction" in table.columns and "bar_yes_kaggle_spread" in table.columns
    named = model.predict([random_image(seed=1), random_image(seed=2)], ids=["a", "b"])
    assert list(named.index) == ["a", "b"]
    features = model.embed(tmp_path / "f")
    assert features.shape == (3, model.model.feature_dim) and list(features.index) == ["10", "11", "12"]


def test_bad_pictures_are_one_clear_error_or_a_listed_skip(model, tmp_path):
    for bad, needle in [(np.zeros((64, 64, 3), np.float32), "ambiguous"),
                        (np.zeros((64, 64, 3, 2, 1), np.uint8), "shape"),
                        ("no/such/file.jpg", "no such"),
                        (object(), "expected"),
                        (Image.new("CMYK", (64, 64)), "CMYK")]:
        with pytest.raises(GzmorphError, match=needle):
            model.predict(bad)
    with pytest.raises(GzmorphError, match="ids"):
        model.predict([random_image()], ids=["a", "b"])
    write_image(tmp_path / "x" / "5.jpg")
    write_image(tmp_path / "y" / "5.jpg", seed=1)
    with pytest.raises(GzmorphError, match="named '5'"):
        model.predict([tmp_path / "x" / "5.jpg", tmp_path / "y" / "5.jpg"])
    assert list(model.predict([tmp_path / "x" / "5.jpg", tmp_path / "y" / "5.jpg"], ids=["x5", "y5"]).index) == \
        ["x5", "y5"]
    (tmp_path / "d").mkdir()
    write_image(tmp_path / "d" / "1.jpg")
    (tmp_path / "d" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(GzmorphError, match="2.jpg"):
        model.predict(tmp_path / "d")
    table = model.predict(tmp_path / "d", skip_bad=True)
    assert list(table.index) == ["1"] and table.attrs["skipped"][0][0].endswith("2.jpg")


def test_a_classifier_answers_with_its_classes(tmp_path):
    task = Task((Column("kind", "classes", ("plain", "ring")), Column("size", "number", mean=20.0, std=5.0)))
    run = tmp_path / "ft"
    run.mkdir()
    cfg = dataclasses.replace(resolve_recipe(TrainConfig(data="", out=str(run), model="seed-cnn")), task=task.to_dict())
    torch.manual_seed(0)
    runs.write_config(run, cfg)
    runs.save_weights(run / runs.BEST, runs.build_model(cfg))
    runs.write_train_mean(run, np.zeros(task.width, np.float32), task.output_names)
    model = gzmorph.load_model(run, precision="fp32")
    assert "kind=plain" in repr(model)
    table = model.predict([random_image(seed=1), random_image(seed=2)])
    assert list(table.columns) == ["kind=plain", "kind=ring", "size", "kind_class"]
    probs = table[["kind=plain", "kind=ring"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert list(table["kind_class"]) == [("plain", "ring")[i] for i in probs.argmax(axis=1)]


def test_load_model_keeps_the_loaded_runs_attributes(model):
    assert isinstance(model.model, torch.nn.Module) and model.config.model == "seed-cnn"
    assert model.prep.size > 0 and len(model.sha256) == 64 and model.policy.name == "fp32"


def test_intervals_of_the_packaged_model(tmp_path):
    model = gzmorph.load_model()
    table = model.predict([random_image(seed=3)], tta=8, interval=0.9)
    lower, value, upper = (table.filter(like=f"_kaggle{s}").to_numpy() for s in ("_lower", "", "_upper"))
    value = table[[c for c in table.columns if c.endswith("_kaggle")]].to_numpy()
    assert lower.shape == value.shape == upper.shape == (1, 37)
    assert (lower <= value + 1e-6).all() and (value <= upper + 1e-6).all() and (lower >= 0).all()
    for bad, needle in [(dict(tta=8, interval=1.5), "between 0 and 1"), (dict(tta=2, interval=0.9), "--tta 8"),
                        (dict(tta=8, interval=0.9, columns="kaggle"), "named")]:
        with pytest.raises(GzmorphError, match=needle):
            model.predict(random_image(), **bad)
