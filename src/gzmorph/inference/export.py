"""``gzmorph export RUN --onnx FILE``: a run's model as an ONNX graph, checked against PyTorch with onnxruntime.

The graph takes what the PyTorch model takes: float32 ``(N, 3, S, S)``, RGB, channels first, each uint8 pixel
divided by 255 (exactly :func:`gzmorph.data.batches.to_input`), with a dynamic batch axis ``N``; it outputs ``(N, 37)`` vote
fractions in the Kaggle column order. Everything a user of the ``.onnx`` file alone needs to feed it (crop, size,
scaling, column names) and where it came from (gzmorph version, model, the weights' SHA-256) is stored in the
model's ``metadata_props``.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). On torch 2.13 it exports every
registered model, Dieleman's ``grid_sample`` viewpoints and the tree heads included, with a dynamic batch axis, and
onnxruntime matches PyTorch to ~1e-7 (~2e-5 for ``seed-resnet50``); it is also the exporter PyTorch develops, while
the TorchScript one (``dynamo=False``) is deprecated. It writes opset 18 or newer: older opsets are a conversion that
fails for some operators, so a request it could not honour is an error rather than a silently different file.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import runs
from ..data.batches import to_input
from ..data.images import REFERENCE_SIDE
from ..errors import BadArgument, GzmorphError
from ..fsio import atomic_write, check_output_file
from ..version import __version__

log = logging.getLogger("gzmorph")

INPUT_NAME = "image"
OUTPUT_NAME = "vote_fractions"
TOLERANCE = 1e-4  # max |ONNX - PyTorch| accepted on the check images; float32 graph rewrites stay far below it
CHECK_BATCHES = (3, 1)  # a batch of several and a batch of one: the second proves the batch axis is dynamic
INPUT_SCALING = ("float32 (N, 3, size, size), RGB, channels first; each uint8 pixel divided by 255 (0..255 -> "
                 "0.0..1.0); no mean/std normalisation")
INSTALL_HINT = "ONNX export needs `pip install 'gzmorph[onnx]'`"


@dataclass
class ExportSummary:
    out: Path
    input_shape: tuple  # ("N", 3, size, size)
    max_abs_diff: float | None  # max |onnxruntime - PyTorch| over the check images; None without onnxruntime
    n_checked: int  # check images run through both
    seconds: float = 0.0  # export + check


def export_onnx(run: str | Path, out: str | Path, *, which: str = "best", opset: int | None = None) -> ExportSummary:
    """Export ``run``'s model (``which``: best, last or a .safetensors file) to the ONNX file ``out``.

    The file is written atomically, and only once onnxruntime (where installed) has matched PyTorch's outputs to
    within :data:`TOLERANCE` on random images: a failed check leaves any earlier file at ``out`` as it was.
    """
    started = time.perf_counter()
    out = check_output_file(out, "model.onnx")  # before the seconds-long export
    try:
        import onnx

        # The dynamo exporter's translator: missing, it would fail deep inside torch; here it fails clearly.
        importlib.import_module("onnxscript")
    except ImportError:
        raise GzmorphError(INSTALL_HINT) from None
    if opset is not None and opset < 18:
        raise BadArgument(f"--opset {opset}: the exporter writes opset 18 or newer (onnxruntime 1.14+ runs them); "
                           f"use --opset 18 or more, or leave it out")
    run = runs.run_folder(run)
    loaded = runs.load_model(run, which, "cpu", "fp32")  # the graph is float32 whatever runs it
    cfg, prep = loaded.config, loaded.prep
    model = loaded.model.eval()
    example = to_input(np.zeros((2, prep.size, prep.size, 3), np.uint8))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    except ImportError:  # an onnx/onnxscript too old for this torch fails on import inside the exporter
        raise GzmorphError(INSTALL_HINT) from None
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise GzmorphError(f"--opset {opset}: the exporter could not convert model {cfg.model!r} to opset {opset} "
                           f"(it produced opset {written}); leave --opset out, or choose another")
    proto.doc_string = (f"gzmorph {cfg.model}: Galaxy Zoo vote fractions (N, 37) from galaxy images (N, 3, "
                        f"{prep.size}, {prep.size}); see metadata_props for the input scaling and the columns")
    metadata = {
        "gzmorph_version": __version__,
        "model": cfg.model,
        "head": str(cfg.head),
        "weights_file": loaded.weights.name,
        "weights_sha256": loaded.sha256,
        "crop": str(prep.crop),
        "size": str(prep.size),
        "input_name": INPUT_NAME,
        "input_scaling": INPUT_SCALING,
        "preprocessing": (f"centre {prep.crop} x {prep.crop} px of the {REFERENCE_SIDE} px Kaggle/SDSS cutout (in "
                          f"proportion for other sizes), resized bilinearly to {prep.size} x {prep.size}"),
        "output_name": OUTPUT_NAME,
        "columns": ",".join(runs.output_names(cfg)),
        "torch_version": torch.__version__,
    }
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)

    checked: list[tuple[float, int] | None] = [None]

    def write(tmp: Path) -> None:
        onnx.save_model(proto, str(tmp))
        checked[0] = _compare(model, tmp, prep.size, cfg.model)

    atomic_write(out, write)
    diff, n = checked[0] if checked[0] is not None else (None, 0)
    return ExportSummary(out, ("N", 3, prep.size, prep.size), diff, n, time.perf_counter() - started)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs and warns about things that do not concern a user (torchvision ops it skips, deprecations
    inside torch.export); the comparison with onnxruntime is what says whether the export is right."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _compare(model: torch.nn.Module, path: Path, size: int, name: str) -> tuple[float, int] | None:
    """(max |onnxruntime - PyTorch|, images checked) on random uint8 images; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX file is not checked against PyTorch")
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on graph rewrites are not the user's concern
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common base class but Exception
        raise GzmorphError(f"onnxruntime {ort.__version__} cannot load the exported {name} model ({e}); a newer "
                           f"onnxruntime, or a lower --opset, may") from None
    rng = np.random.default_rng(0)
    worst, n = 0.0, 0
    for batch in CHECK_BATCHES:
        x = to_input(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != want.shape:
            raise GzmorphError(f"the exported {name} model gives shape {got.shape} for a batch of {batch}, PyTorch "
                               f"{want.shape}; nothing was written")
        worst, n = max(worst, float(np.abs(got - want).max())), n + batch
    if not worst <= TOLERANCE:  # also catches NaN
        raise GzmorphError(f"the exported {name} model differs from PyTorch by {worst:.2e} (more than {TOLERANCE:g}) "
                           f"on {n} random images; nothing was written")
    return worst, n
