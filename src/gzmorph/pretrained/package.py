"""Scoring a trained run on the test split and writing it, as float16 weights with their card, into the package's
pretrained folder: how the model inside gzmorph is made (``benchmarks/pretrained.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import pretrained


def package(run: str | Path, data: str | Path, *, train_seconds: float, machine: dict, command: str,
            started_from: dict | None = None) -> dict:
    """Score ``run``'s last weights on the test split of ``data`` and write them (float16) with their card into
    this folder. ``started_from``: what the run's ``init`` was (recipe, history, minutes; the earlier packaged model
    by its SHA-256), recorded in the card in its place. Returns the card."""
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
    tmp = pretrained.WEIGHTS.with_suffix(".tmp")
    save_file(half, str(tmp), metadata={"model": cfg.model, "gzmorph_version": __version__})
    os.replace(tmp, pretrained.WEIGHTS)
    history = runs.read_metrics(run)
    config = cfg.to_dict()
    if started_from is not None:
        # The init run's path means nothing outside the machine that trained it, and "gznet-gz2" would name this
        # very model once shipped: the card's started_from says what it was.
        config["init"] = None
    mean = runs.read_train_mean(run)
    info = {
        "name": pretrained.NAME, "file": pretrained.WEIGHTS.name, "bytes": pretrained.WEIGHTS.stat().st_size, "sha256": runs.file_sha256(pretrained.WEIGHTS),
        "gzmorph_version": __version__, "torch_version": torch.__version__, "command": command,
        "config": config, "train_mean": dict(zip(tree.COLUMNS, map(float, mean))), "history": history,
        "train_minutes": train_seconds / 60, "machine": machine,
        **({"started_from": started_from,
            "total_train_minutes": train_seconds / 60 + started_from.get("train_minutes", 0.0)} if started_from else {}),
        "data": "the shared Kaggle sample: train + valid splits (6,378 fully labelled galaxies) and the 4,000 "
                "partially labelled ones; never the test split",
        "test": scores,
        "limits": "Trained on SDSS colour JPEGs in the Kaggle framing (424 px cutouts, galaxy centred, about 0.4 arcsec "
                  "per pixel): other surveys, bands, depths or framings are outside what it saw; fine-tune on your "
                  "own labels there. Its answers are Galaxy Zoo 2 volunteer vote fractions, not classes.",
    }
    pretrained.CARD.write_text(json.dumps(info, indent=2) + "\n")
    return info


def record_calibration(levels: dict, command: str) -> dict:
    """Write into the card what the shipped interval calibration is (its file's SHA-256, views, galaxies) and its
    coverage on the test split per level (``levels``: benchmarks/uncertainty.py's measurement). Returns the entry."""
    from ..run_layout import file_sha256

    cal = json.loads(pretrained.CALIBRATION.read_text())
    entry = {
        "file": pretrained.CALIBRATION.name, "sha256": file_sha256(pretrained.CALIBRATION),
        "method": "split-conformal intervals normalised by the spread over the TTA views (gzmorph.inference.intervals)",
        "tta": cal["tta"], "command": command,
        "calibrated_on": {"split": cal["data"].get("split"), "n_galaxies": cal["n_galaxies"],
                          "note": "the model also trained on these galaxies (train_on_valid), so its intervals run "
                                  "about a point narrow of their level"
                          if cal["data"].get("run_trained_on_these_galaxies") else ""},
        "test_coverage": {level: {"all": round(v["coverage"], 4),
                                  "lowest_question": min(v["coverage_per_question"], key=v["coverage_per_question"].get),
                                  "lowest": round(min(v["coverage_per_question"].values()), 4),
                                  "mean_width": round(v["mean_width"], 4)} for level, v in levels.items()},
    }
    card = json.loads(pretrained.CARD.read_text())
    card["calibration"] = entry
    pretrained.CARD.write_text(json.dumps(card, indent=2) + "\n")
    return entry
