"""`gzmorph embed` (features, sharded and merged), `gzmorph similar` (neighbours, image queries, the oddest list,
exact and approximate indexes), the web page's "galaxies like this one", and per-answer spread over TTA views."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from gzmorph.cli import main
from gzmorph.inference import similar as sim
from gzmorph.inference.embed import embed, merge_features
from gzmorph.inference.predict import spread_path
from helpers import cli_fails, make_fake_run, write_image, write_kaggle_folder

pytest.importorskip("faiss")


def gz(argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of 30 images, two of which are byte-identical twins under other ids, a run, and its features."""
    root = tmp_path_factory.mktemp("sim")
    folder = write_kaggle_folder(root / "data", n=30, seed=12)
    images = folder.training_images
    shutil.copy(images / f"{folder.ids[0]}.jpg", images / "900001.jpg")
    shutil.copy(images / f"{folder.ids[1]}.jpg", images / "900002.jpg")
    run = make_fake_run(root / "run", "gznet", seed=2)
    out = root / "features"
    embed(run, images, out, workers=1, progress=False, precision="fp32")
    return folder, run, out


def test_embed_writes_features_ids_answers_and_provenance(setup):
    folder, run, out = setup
    vectors = np.load(f"{out}.npy")
    assert vectors.dtype == np.float16 and vectors.shape == (32, 256) and np.isfinite(vectors).all()
    rows = list(csv.reader(open(f"{out}.csv", newline="")))
    assert rows[0][:3] == ["GalaxyID", "file", "Class1.1"] and len(rows[0]) == 2 + 37 and len(rows) == 33
    meta = json.loads(open(f"{out}.npy.json").read())
    assert meta["n"] == 32 and meta["dim"] == 256 and meta["crop"] == 192 and meta["size"] == 64
    from gzmorph import runs

    assert meta["weights_sha256"] == runs.file_sha256(run / runs.BEST)


def test_sharded_embed_merges_into_the_unsharded_set(setup, tmp_path, capsys):
    folder, run, out = setup
    for i in range(3):
        assert gz(["embed", run, folder.training_images, "-o", tmp_path / f"part{i}", "--shard", f"{i}/3",
                   "--workers", 1, "--precision", "fp32", "-q"]) == 0
    merged = merge_features([tmp_path / f"part{i}.npy" for i in (2, 0, 1)], tmp_path / "all")
    assert merged.n == 32
    assert np.array_equal(np.load(tmp_path / "all.npy"), np.load(f"{out}.npy"))
    assert open(tmp_path / "all.csv").read() == open(f"{out}.csv").read()
    cli_fails(capsys, ["merge", tmp_path / "part0.npy", tmp_path / "part1.npy", "-o", tmp_path / "x"], "missing shard")


def test_a_galaxy_s_twin_is_its_nearest_neighbour(setup):
    folder, run, out = setup
    features = sim.open_features(f"{out}.npy")
    found = sim.similar(features, str(folder.ids[0]), k=5)
    assert len(found.rows) == 5 and found.query_row not in found.rows
    assert features.ids[found.rows[0]] == "900001" and found.similarities[0] > 0.999
    assert (np.diff(found.similarities) <= 1e-6).all()  # best first


def test_an_image_query_is_embedded_by_the_features_run(setup, capsys, tmp_path):
    folder, run, out = setup
    image = folder.training_images / f"{folder.ids[1]}.jpg"
    code = gz(["similar", f"{out}.npy", "--query", image, "-k", 3, "--gallery", tmp_path / "g.png"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert {line.split()[1] for line in lines[2:4]} == {str(folder.ids[1]), "900002"}  # itself, and its twin
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_the_oddest_galaxies_are_listed(setup, capsys):
    folder, run, out = setup
    assert gz(["similar", f"{out}.npy", "--odd", 4]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 4 and "farthest" in lines[0]
    features = sim.open_features(f"{out}.npy")
    rows, distance = sim.oddest(features, 4)
    # By brute force: one minus the mean cosine similarity to the 10 nearest others, largest first.
    v = np.asarray(features.vectors, np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cos = v @ v.T
    np.fill_diagonal(cos, -np.inf)
    want = 1 - np.sort(cos, axis=1)[:, -sim.ODD_K:].mean(1)
    np.testing.assert_allclose(distance, np.sort(want)[::-1][:4], atol=1e-4)
    assert set(rows) == set(np.argsort(-want)[:4])


def test_the_oddest_galaxies_are_drawn_when_asked(setup, capsys, tmp_path):
    folder, run, out = setup
    assert gz(["similar", f"{out}.npy", "--odd", 3, "--gallery", tmp_path / "odd.png"]) == 0
    assert f"wrote {tmp_path / 'odd.png'}" in capsys.readouterr().out
    assert (tmp_path / "odd.png").read_bytes()[:4] == b"\x89PNG"


def test_the_approximate_index_finds_the_twin_too(setup, monkeypatch):
    folder, run, out = setup
    monkeypatch.setattr(sim, "EXACT_LIMIT", 10)
    features = sim.open_features(f"{out}.npy")
    index = sim.Index(features)
    assert not index.exact
    found = sim.similar(features, str(folder.ids[0]), k=3, index=index)
    assert features.ids[found.rows[0]] == "900001"


def test_bad_similarity_input_is_one_clear_error(setup, tmp_path, capsys):
    folder, run, out = setup
    other = make_fake_run(tmp_path / "other", "gznet", seed=3)
    image = folder.training_images / f"{folder.ids[2]}.jpg"
    cli_fails(capsys, ["similar", f"{out}.npy", "--query", image, "--run", other], "different runs")
    cli_fails(capsys, ["similar", f"{out}.npy", "--query", "123"], "GalaxyID 123 is not in")
    cli_fails(capsys, ["similar", f"{out}.npy", "--query", folder.ids[0], "-k", 0], "at least one")
    cli_fails(capsys, ["similar", f"{out}.npy"], "--query", "--odd")
    cli_fails(capsys, ["similar", tmp_path / "none.npy", "--query", "1"], "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_image(empty / "bad.jpg", 32)
    (empty / "bad.jpg").write_bytes(b"broken")
    cli_fails(capsys, ["embed", run, empty, "-o", tmp_path / "e", "--skip-bad", "--workers", 1, "-q"],
              "nothing was embedded")


def test_the_page_shows_galaxies_like_the_dropped_one(setup):
    from test_serve import running, upload

    folder, run, out = setup
    with running(run, tta=1, index=f"{out}.npy") as (server, base):
        status, result = upload(base, folder.training_images / f"{folder.ids[0]}.jpg")
    assert status == 200
    ids = [s["id"] for s in result["similar"]]
    assert len(ids) == 8 and ids[0] in (str(folder.ids[0]), "900001")
    assert all(s["thumb"].startswith("data:image/png;base64,") for s in result["similar"])


def test_spread_over_views_is_written_beside_the_submission_and_scored(setup, tmp_path):
    folder, run, out = setup
    sub = tmp_path / "sub.csv"
    assert gz(["predict", run, folder.training_images, "-o", sub, "--tta", 4, "--spread", "--workers", 1, "-q"]) == 0
    spread = list(csv.reader(open(spread_path(sub), newline="")))
    assert spread[0] == list(csv.reader(open(sub, newline="")))[0] and len(spread) == 33
    values = np.array([[float(v) for v in r[1:]] for r in spread[1:]])
    assert (values >= 0).all() and values.max() > 0
    import gzmorph

    result = gzmorph.evaluate(run, folder.root, "valid", tta=8, spread=True, write=False, progress=False)
    u = result["uncertainty"]
    assert set(u) >= {"spearman_all", "spearman_per_answer", "rmse_most_certain_tenth", "rmse_least_certain_tenth"}
    assert -1 <= u["spearman_all"] <= 1
