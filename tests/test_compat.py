"""What gzmorph 0.1 made still works: its weight files load (one flat module per model, before the backbone + head
split), its runs predict the same, and the same seed trains bitwise the same weights in fp32.

The figures below were recorded by running gzmorph 0.1 (commit b052136) itself: the names and shapes its models'
state dicts had, and the weights a short fp32 run trained.
"""

from __future__ import annotations

import hashlib

import numpy as np
import PIL
import pytest
import torch
from safetensors.torch import load_file, save_file

import gzmorph
from gzmorph import runs
from gzmorph.models import create_model, get_spec, list_models
from gzmorph.models.net import legacy_key
from gzmorph.precision import cpu_kind
from helpers import make_fake_run, random_image, write_kaggle_folder

# sha256 (first 16 hex digits) of the sorted "name:shape" lines of each model's state dict in gzmorph 0.1.
STATE_DICT_0_1 = {
    "dieleman": "b727adb926c6d939",
    "gznet": "9f01a730523b4271",
    "resnet50": "4f197536ba3a4334",
    "seed-cnn": "4ccf33252ca86fcc",
    "seed-resnet50": "82e3bd04f0dcf5b6",
}


def legacy_names(model: torch.nn.Module, name: str) -> dict[str, str]:
    """New name -> the name gzmorph 0.1 gave the same tensor (the inverse of ``legacy_key``)."""
    head = get_spec(name).legacy_head
    out = {}
    for key in model.state_dict():
        old = head + key[len("head.linear"):] if key.startswith("head.linear.") else key[len("backbone."):]
        assert legacy_key(old, head) == key
        out[key] = old
    return out


def test_every_registered_model_has_its_0_1_names_recorded():
    assert set(STATE_DICT_0_1) == set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_the_0_1_names_are_exactly_what_the_legacy_map_reads(name):
    model = create_model(name)
    names = legacy_names(model, name)
    lines = "\n".join(f"{names[k]}:{tuple(v.shape)}" for k, v in sorted(model.state_dict().items(),
                                                                        key=lambda kv: names[kv[0]]))
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == STATE_DICT_0_1[name]


@pytest.mark.parametrize("name", ["gznet", "seed-cnn", "dieleman"])
def test_a_run_saved_in_the_0_1_layout_loads_and_predicts_the_same(tmp_path, name):
    run = make_fake_run(tmp_path / "run", name)
    pixels = np.stack([random_image(get_spec(name).size, seed=k) for k in range(3)])
    want = gzmorph.load_model(run, precision="fp32")
    for weights in (runs.BEST, runs.LAST):
        tensors = load_file(run / weights)
        names = legacy_names(want.model, name)
        save_file({names[k]: v for k, v in tensors.items()}, str(run / weights))
    got = gzmorph.load_model(run, precision="fp32")
    from gzmorph.inference.tta import predict_answers

    assert np.array_equal(predict_answers(got, pixels), predict_answers(want, pixels))


def _weights_digest(run) -> str:
    tensors = load_file(run / runs.LAST)
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# The weights after one fp32 epoch on the folder below, trained by gzmorph 0.1 (and reproduced by this version) with
# torch 2.13.0+cpu and Pillow 13.0.0 (which writes the folder's JPEGs), per CPU kind: oneDNN picks its kernels by
# instruction set, so the kinds round differently (and other versions may too); elsewhere the test does not apply.
# Recorded on a Zen 4 EPYC (AVX-512 BF16) and on a Zen 3 EPYC (AVX2, no AVX-512), where 0.1 and this version
# trained tensors equal to the last bit.
TRAINED_0_1 = {
    "avx512bf16": {"gznet": "38524f719d49724d", "seed-cnn": "751d82217e9958e2"},
    "avx2": {"gznet": "4cb215aee085c066", "seed-cnn": "0a0877909c07d90f"},
}
RECORDED_WITH = ("2.13.0+cpu", "13.0.0")
# 0.1's rates and warm-up, given in full: a batch size set alone now scales the model's rate (and gznet's recipe is
# batch 256, lr 8e-3, 3 warm-up epochs since).
RECIPE_0_1 = {"gznet": {"lr": 2e-3, "warmup_epochs": 1}, "seed-cnn": {"lr": 1e-3}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gznet", "seed-cnn"])
def test_the_same_seed_trains_bitwise_the_weights_of_0_1(tmp_path, name):
    kind = cpu_kind()
    if (torch.__version__, PIL.__version__) != RECORDED_WITH or kind not in TRAINED_0_1:
        pytest.skip(f"recorded with torch {RECORDED_WITH[0]}, Pillow {RECORDED_WITH[1]} on {' and '.join(TRAINED_0_1)} "
                    f"CPUs")
    folder = write_kaggle_folder(tmp_path / "data", n=24, seed=3, partial_rows=6)
    threads = torch.get_num_threads()  # train() sets the process's thread count; the tests after this keep theirs
    try:
        run = gzmorph.train(gzmorph.TrainConfig(
            data=str(folder.root), out=str(tmp_path / name), model=name, epochs=1, batch_size=8, threads=1,
            workers=1, augment="strong", precision="fp32", **RECIPE_0_1[name]), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert _weights_digest(run) == TRAINED_0_1[kind][name]
