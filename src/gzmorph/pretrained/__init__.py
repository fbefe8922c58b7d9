"""The model inside gzmorph: float16 weights and their card (recipe, data, scores, SHA-256) in this folder.

Wherever a run folder is asked for, ``pretrained`` (or nothing, where the run is optional) means this model. It is
checked against the SHA-256 its card records and unpacked once into an ordinary run folder under the image cache
(``$GZMORPH_CACHE/pretrained/<sha>``: config.json, float32 best.safetensors, train_mean.json, metrics.csv), so every
command that reads a run reads it the same way. Nothing is downloaded: the file ships in the wheel.

``benchmarks/pretrained.py`` trains it and calls ``gzmorph.pretrained.package.package``, which writes the weights and
their card into this folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
NAME = "gznet-gz2"
WEIGHTS = FOLDER / f"{NAME}.safetensors"
CARD = FOLDER / f"{NAME}.json"
# Its interval calibration (gzmorph.inference.calibration), made by benchmarks/uncertainty.py --package; read in
# place, like the card.
CALIBRATION = FOLDER / f"{NAME}.calibration.json"
ALIASES = ("pretrained", NAME)


def is_alias(run) -> bool:
    return run is None or str(run) in ALIASES


def card() -> dict:
    from ..errors import BadRun

    if not (WEIGHTS.is_file() and CARD.is_file()):
        raise BadRun(f"this installation of gzmorph has no pretrained model ({WEIGHTS.name} and {CARD.name} are "
                     f"missing from {FOLDER}); pass a run folder, or train one with `gzmorph train`")
    return json.loads(CARD.read_text())


def run_folder() -> Path:
    """The packaged model as a run folder (unpacked on first use, after its SHA-256 is checked)."""
    from .. import run_layout
    from ..data.cache import default_cache_dir
    from ..errors import BadRun

    info = card()
    sha = run_layout.file_sha256(WEIGHTS)
    if sha != info["sha256"]:
        raise BadRun(f"{WEIGHTS}: its SHA-256 is {sha[:16]}..., but its card records {info['sha256'][:16]}...; the "
                     f"file is damaged or was replaced: reinstall gzmorph")
    # "-2": copies unpacked before they recorded the packaged file's path are unpacked again
    folder = default_cache_dir() / "pretrained" / f"{sha[:16]}-2"
    if (folder / run_layout.BEST).is_file() and (folder / run_layout.CONFIG).is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:16]}-", dir=folder.parent))
    except OSError:  # no writable cache: unpack into a private temporary folder instead
        tmp = folder = Path(tempfile.mkdtemp(prefix="gzmorph-pretrained-"))
    _unpack(info, tmp)
    if tmp != folder:
        try:
            os.replace(tmp, folder)
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _unpack(info: dict, folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    from .. import run_layout

    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(WEIGHTS)).items()}
    save_file(tensors, str(folder / run_layout.BEST), metadata={"source": WEIGHTS.name, "sha256": info["sha256"],
                                                          "source_path": str(WEIGHTS)})
    (folder / run_layout.CONFIG).write_text(json.dumps({"gzmorph_version": info["gzmorph_version"],
                                                  "train": info["config"], "pretrained": NAME}, indent=2))
    (folder / run_layout.TRAIN_MEAN).write_text(json.dumps(info["train_mean"], indent=2))
    run_layout.write_metrics(folder, info["history"])
