"""Images -> a run's pooled features (its representation of each galaxy), for similarity search, clustering and
anomaly lists: `gzmorph embed RUN IMAGES -o features`.

Three files, each one line to open:

    features.npy        (N, D) float16, one row per galaxy          numpy.load("features.npy", mmap_mode="r")
    features.csv        GalaxyID, file, then the run's answers      pandas.read_csv("features.csv")
    features.npy.json   the run, its weights' SHA-256, the preprocessing, precision, counts, skipped files

Streamed like ``predict`` (the one decoder, constant memory): rows go to temporary files as they come, and the
``.npy`` gets its header, with the final row count, when the job has finished. ``--shard I/N`` embeds one slice of
the image list; ``gzmorph merge`` joins the parts (``merge_features``).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runs
from ..data.layout import ID_COLUMN
from ..errors import BadData, BadImage
from ..fsio import atomic_write_json, check_output_file, replace_atomically
from ..training import distributed
from ..version import __version__
from .predict import ImageStream, collect_inputs, galaxy_id
from .shards import check_parts, inputs_digest, parse_shard, shard_slice
from .tta import embed_array, finish_answers

log = logging.getLogger("gzmorph")

DTYPE = np.float16  # half the disk of float32; cosine similarities move by ~1e-3 at most


def feature_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(the .npy, its .csv, its .json) for ``-o out`` (with or without the .npy suffix)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".npy" else out
    npy = stem.with_name(stem.name + ".npy")
    return npy, stem.with_name(stem.name + ".csv"), Path(f"{npy}.json")


@dataclass
class EmbedSummary:
    out: Path
    n: int
    dim: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


def _write_npy(raw: Path, target: Path, n: int, dim: int) -> None:
    """``raw`` (n x dim DTYPE values, row after row) as a .npy file at ``target``, copied in blocks."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(DTYPE)),
                                                 "fortran_order": False, "shape": (n, dim)})
        with open(raw, "rb") as src:
            for block in iter(lambda: src.read(1 << 24), b""):
                f.write(block)
    replace_atomically(tmp, target)


def embed(run: str | Path | None, images: str | Path, out: str | Path = "features", *, which: str = "best",
          batch_size: int = 256, workers: int | None = None, device: str = "auto", precision: str = "auto",
          skip_bad: bool = False, shard: str | tuple[int, int] | None = None, progress: bool = True) -> EmbedSummary:
    """Write the pooled features of every image in ``images`` (folder, image or list file) under ``run`` (default:
    the model inside gzmorph) to ``out``.npy / .csv / .npy.json."""
    npy, table, meta = feature_paths(out)
    check_output_file(npy, "features.npy")
    shard = parse_shard(shard)
    run = runs.run_folder(run)
    cluster = distributed.from_env()
    loaded = runs.load_model(run, which, distributed.pick_device(cluster, device), precision)
    if not hasattr(loaded.model, "features"):
        raise BadData(f"{run}: its model has no pooled features to embed")
    all_paths = collect_inputs(images)
    paths = all_paths[shard_slice(len(all_paths), *shard)] if shard else all_paths
    stream = ImageStream(paths, loaded.prep, batch_size=batch_size,
                         workers=workers or min(distributed.cpu_share(cluster, None), 16), skip_bad=skip_bad,
                         listed_in=str(meta), progress=progress, desc="embedding",
                         overlap=loaded.policy.device.type != "cpu")
    names = runs.output_names(loaded.config)
    dim = loaded.model.feature_dim
    started = time.perf_counter()
    raw = npy.with_name(f".{npy.name}.rows-{os.getpid()}")
    csv_tmp = table.with_name(f".{table.name}.tmp-{os.getpid()}")
    try:
        with open(raw, "wb") as f, open(csv_tmp, "w", newline="") as c:
            rows = csv.writer(c, lineterminator="\n")
            rows.writerow((ID_COLUMN, "file", *names))
            for good, pixels in stream:
                features, outputs = embed_array(loaded.model, pixels, batch_size, loaded.policy)
                f.write(features.astype(DTYPE).tobytes())
                answers = finish_answers(loaded.config, outputs)
                rows.writerows([galaxy_id(p), str(p), *(f"{v:.6f}" for v in row)] for p, row in zip(good, answers))
        if stream.n_good == 0 and paths:
            raise BadData(f"none of the {len(paths)} images could be read; nothing was embedded")
        _write_npy(raw, npy, stream.n_good, dim)
        replace_atomically(csv_tmp, table)
    except BadImage as e:
        raise BadData(str(e)) from None
    finally:
        raw.unlink(missing_ok=True)
        csv_tmp.unlink(missing_ok=True)
    summary = EmbedSummary(npy, stream.n_good, dim, stream.skipped, time.perf_counter() - started)
    atomic_write_json(meta, {
        "features": npy.name, "table": table.name, "n": stream.n_good, "dim": dim, "dtype": np.dtype(DTYPE).name,
        "run": str(run), "model": loaded.config.model, "weights": str(loaded.weights),
        "weights_sha256": loaded.sha256, "crop": loaded.prep.crop, "size": loaded.prep.size,
        "precision": loaded.policy.name, "outputs": names, "gzmorph_version": __version__,
        "n_skipped": len(stream.skipped), "skipped": [{"path": p, "why": w} for p, w in stream.skipped],
        "seconds": summary.seconds, "shard": list(shard) if shard else None, "n_inputs": len(paths),
        "n_inputs_all_shards": len(all_paths), "inputs_sha256": inputs_digest(all_paths)})
    return summary


def merge_features(parts: Sequence[str | Path], out: str | Path) -> EmbedSummary:
    """Join the parts of ``embed --shard I/N`` (given as their .npy files, in any order) into one set, in shard
    order, after checking they are the complete set of one job. Streams: constant memory."""
    npy, table, meta = feature_paths(out)
    check_output_file(npy, "features.npy")
    infos = check_parts([feature_paths(p)[0] for p in parts], npy, "embed",
                        (("weights_sha256", "weights"), ("precision", "--precision settings")))
    n = sum(info["n"] for _, info in infos)
    dim = infos[0][1]["dim"]
    raw = npy.with_name(f".{npy.name}.rows-{os.getpid()}")
    csv_tmp = table.with_name(f".{table.name}.tmp-{os.getpid()}")
    try:
        with open(raw, "wb") as f, open(csv_tmp, "w", newline="") as c:
            for k, (part, info) in enumerate(infos):
                rows = np.load(part, mmap_mode="r")
                if rows.shape != (info["n"], dim):
                    raise BadData(f"{part}: holds {rows.shape} but its .json records ({info['n']}, {dim}); embed it "
                                  f"again")
                for start in range(0, len(rows), 65536):
                    f.write(np.ascontiguousarray(rows[start:start + 65536]).tobytes())
                with open(feature_paths(part)[1], newline="") as src:
                    header = src.readline()
                    if k == 0:
                        c.write(header)
                    c.writelines(src)
        _write_npy(raw, npy, n, dim)
        replace_atomically(csv_tmp, table)
    finally:
        raw.unlink(missing_ok=True)
        csv_tmp.unlink(missing_ok=True)
    first = infos[0][1]
    skipped = [(s["path"], s["why"]) for _, info in infos for s in info["skipped"]]
    atomic_write_json(meta, {**first, "features": npy.name, "table": table.name, "n": n, "shard": None,
                             "merged_from": [str(p) for p, _ in infos], "n_skipped": len(skipped),
                             "skipped": [{"path": p, "why": w} for p, w in skipped],
                             "seconds": max(info["seconds"] for _, info in infos),
                             "n_inputs": first["n_inputs_all_shards"]})
    return EmbedSummary(npy, n, dim, skipped, max(info["seconds"] for _, info in infos))
