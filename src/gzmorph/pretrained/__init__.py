"""The model inside gzmorph: float16 weights and their card (recipe, data, scores, SHA-256) in this folder.

Wherever a run folder is asked for, ``pretrained`` (or nothing, where the run is optional) means this model. It is
checked against the SHA-256 its card records and unpacked once into an ordinary run folder under the image cache
(``$GZMORPH_CACHE/pretrained/<sha>``: config.json, float32 best.safetensors, train_mean.json, metrics.csv), so every
command that reads a run reads it the same way. Nothing is downloaded: the file ships in the wheel.

``benchmarks/pretrained.py`` trains it and calls :func:`package`.
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
    from .. import runs
    from ..data.cache import default_cache_dir
    from ..errors import BadRun

    info = card()
    sha = runs.file_sha256(WEIGHTS)
    if sha != info["sha256"]:
        raise BadRun(f"{WEIGHTS}: its SHA-256 is {sha[:16]}..., but its card records {info['sha256'][:16]}...; the "
                     f"file is damaged or was replaced: reinstall gzmorph")
    folder = default_cache_dir() / "pretrained" / sha[:16]
    if (folder / runs.BEST).is_file() and (folder / runs.CONFIG).is_file():
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

    from .. import runs

    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(WEIGHTS)).items()}
    save_file(tensors, str(folder / runs.BEST), metadata={"source": WEIGHTS.name, "sha256": info["sha256"]})
    (folder / runs.CONFIG).write_text(json.dumps({"gzmorph_version": info["gzmorph_version"],
                                                  "train": info["config"], "pretrained": NAME}, indent=2))
    (folder / runs.TRAIN_MEAN).write_text(json.dumps(info["train_mean"], indent=2))
    runs.write_metrics(folder, info["history"])


def package(run: str | Path, data: str | Path, *, train_seconds: float, machine: dict, command: str) -> dict:
    """Score ``run``'s last weights on the test split of ``data`` and write them (float16) with their card into
    this folder. Returns the card."""
    import torch
    from safetensors.torch import load_file, save_file

    from .. import runs, tree
    from ..inference.evaluate import evaluate
    from ..version import __version__

    run = Path(run)
    cfg = runs.read_config(run)
    scores = {}
    for tta in (1, 8):
        result = evaluate(run, data, "test", which="last", tta=tta, write=False, progress=False)
        scores[f"tta{tta}"] = {"rmse": result["rmse"], "per_question": result["per_question"]}
    scores["baseline"] = result["baseline"]
    scores["n_galaxies"] = result["n_galaxies"]
    half = {k: (v.half() if v.is_floating_point() else v).contiguous()
            for k, v in load_file(str(run / runs.LAST)).items()}
    tmp = WEIGHTS.with_suffix(".tmp")
    save_file(half, str(tmp), metadata={"model": cfg.model, "gzmorph_version": __version__})
    os.replace(tmp, WEIGHTS)
    history = runs.read_metrics(run)
    mean = runs.read_train_mean(run)
    info = {
        "name": NAME, "file": WEIGHTS.name, "bytes": WEIGHTS.stat().st_size, "sha256": runs.file_sha256(WEIGHTS),
        "gzmorph_version": __version__, "torch_version": torch.__version__, "command": command,
        "config": cfg.to_dict(), "train_mean": dict(zip(tree.COLUMNS, map(float, mean))), "history": history,
        "train_minutes": train_seconds / 60, "machine": machine,
        "data": "the shared Kaggle sample: train + valid splits (6,378 fully labelled galaxies) and the 4,000 "
                "partially labelled ones; never the test split",
        "test": scores,
        "limits": "Trained on SDSS colour JPEGs in the Kaggle framing (424 px cutouts, galaxy centred, about 0.4 arcsec "
                  "per pixel): other surveys, bands, depths or framings are outside what it saw; fine-tune on your "
                  "own labels there. Its answers are Galaxy Zoo 2 volunteer vote fractions, not classes.",
    }
    CARD.write_text(json.dumps(info, indent=2) + "\n")
    return info

