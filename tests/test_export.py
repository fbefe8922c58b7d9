"""ONNX export: every registered model matches PyTorch in onnxruntime, with a dynamic batch axis and the metadata a
user of the .onnx file alone needs; the CLI path and its errors."""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from gzmorph import __version__, runs, tree
from gzmorph.inference import export  # noqa: E402
from gzmorph.cli import main  # noqa: E402
from gzmorph.errors import GzmorphError  # noqa: E402
from gzmorph.inference.export import export_onnx  # noqa: E402
from gzmorph.data.batches import to_input  # noqa: E402
from gzmorph.models import MODELS  # noqa: E402

from helpers import cli_fails, make_fake_run, random_image  # noqa: E402

# The ResNet-50s take 9-10 s each on 2 CPU cores (export ~7 s, 90 MB of weights): marked slow.
SLOW = {"resnet50", "seed-resnet50"}


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(MODELS)])
def test_every_model_exports_and_matches(tmp_path, name):
    run = make_fake_run(tmp_path / "run", model=name)
    started = time.perf_counter()
    summary = export_onnx(run, tmp_path / f"{name}.onnx")
    seconds = time.perf_counter() - started
    loaded = runs.load_model(run)
    size = loaded.prep.size
    assert summary.out == tmp_path / f"{name}.onnx" and summary.out.is_file()
    assert summary.input_shape == ("N", 3, size, size)
    assert summary.n_checked == 4 and summary.max_abs_diff is not None and summary.max_abs_diff <= 1e-4

    # Independently of export_onnx's own check: batches of 3 and of 1 (the batch axis is dynamic).
    sess = session(summary.out)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, size, size]
    assert out.shape[1:] == [37]
    rng = np.random.default_rng(1)
    diffs = []
    for batch in (3, 1):
        x = to_input(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
        with torch.no_grad():
            want = loaded.model(x).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == (batch, 37)
        diffs.append(float(np.abs(got - want).max()))
    assert max(diffs) <= 1e-4, diffs
    print(f"\n{name}: export {seconds:.1f} s, max |diff| {summary.max_abs_diff:.2e} (own check), "
          f"{max(diffs):.2e} (test), {summary.out.stat().st_size / 2**20:.0f} MiB")


def test_metadata_is_enough_to_feed_the_model(tmp_path):
    """A user with only the .onnx file: size and scaling from its metadata give gzmorph's predictions."""
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    path = export_onnx(run, tmp_path / "m.onnx").out
    meta = metadata(path)
    loaded = runs.load_model(run)
    assert meta["gzmorph_version"] == __version__ and meta["model"] == "seed-cnn"
    assert meta["weights_sha256"] == loaded.sha256 and meta["weights_file"] == "best.safetensors"
    assert (int(meta["crop"]), int(meta["size"])) == (loaded.prep.crop, loaded.prep.size)
    assert meta["columns"].split(",") == list(tree.COLUMNS)
    assert "255" in meta["input_scaling"] and "(N, 3, size, size)" in meta["input_scaling"]
    size = int(meta["size"])
    pixels = np.stack([random_image(size, seed=s) for s in range(2)])  # (N, H, W, 3) uint8
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0  # as the metadata says
    got = session(path).run(None, {meta["input_name"]: x})[0]
    with torch.no_grad():
        want = loaded.model(to_input(pixels)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cli_export(tmp_path, capsys, caplog):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    caplog.set_level(logging.INFO)
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    # The exporter's own passes log dozens of INFO lines ("Replaced initializer ..."): none reach the user.
    assert [r.name for r in caplog.records if not r.name.startswith("gzmorph")] == []
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'm.onnx'}" in out and "onnxruntime matches PyTorch" in out
    assert (tmp_path / "m.onnx").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_bad_destination(tmp_path, capsys):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    cli_fails(capsys, ["export", run, "--onnx", tmp_path], "is a folder")
    (tmp_path / "file").write_text("")
    cli_fails(capsys, ["export", run, "--onnx", tmp_path / "file" / "m.onnx"], "is not a folder")
    cli_fails(capsys, ["export", tmp_path / "norun", "--onnx", tmp_path / "m.onnx"], "not a gzmorph run folder")
    cli_fails(capsys, ["export", run, "--onnx", tmp_path / "m.onnx", "--opset", "13"], "--opset 13", "18")


def test_opset(tmp_path):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    path = export_onnx(run, tmp_path / "m.onnx", opset=18).out
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_failed_check_keeps_the_previous_file(tmp_path, monkeypatch):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no export can pass: the check must refuse it
    with pytest.raises(GzmorphError, match="seed-cnn model differs from PyTorch"):
        export_onnx(run, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "run"]


def test_without_onnx(tmp_path, monkeypatch):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(GzmorphError, match=r"pip install 'gzmorph\[onnx\]'"):
        export_onnx(run, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_without_onnxruntime(tmp_path, monkeypatch, capsys):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    summary = export_onnx(run, tmp_path / "m.onnx")
    assert summary.max_abs_diff is None and summary.n_checked == 0 and summary.out.is_file()
    assert main(["export", str(run), "--onnx", str(tmp_path / "m2.onnx")]) == 0
    assert "onnxruntime not installed" in capsys.readouterr().out
