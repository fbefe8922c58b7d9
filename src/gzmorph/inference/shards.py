"""Scale-out of prediction: ``--shard I/N`` takes the I-th of N contiguous slices of the (sorted) image list, on any
machine, and ``merge`` joins the N outputs after checking that they are the complete set of one job (the same image
list, weights and settings, each shard once, and the row counts their ``.json`` files recorded)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import BadArgument, BadData
from ..fsio import atomic_write, atomic_write_json, check_output_file


@dataclass
class PredictionSummary:
    """What a prediction job (or a merge of its shards) wrote."""

    out: Path
    n_predicted: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    model_sha256: str = ""
    n_resumed: int = 0  # rows an earlier, killed run of the job had written (not predicted in ``seconds``)

    @property
    def images_per_second(self) -> float:
        return (self.n_predicted - self.n_resumed) / self.seconds if self.seconds else 0.0


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) -> (I, N)."""
    if shard is None or isinstance(shard, tuple):
        i, n = shard if shard else (0, 1)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m:
            raise BadArgument(f"--shard {shard!r}: expected I/N, e.g. --shard 0/4 for the first of 4 shards")
        i, n = int(m.group(1)), int(m.group(2))
    if not 0 <= i < n:
        raise BadArgument(f"--shard {i}/{n}: I must be 0 .. N-1 (shards are numbered from 0)")
    return None if shard is None else (i, n)


def shard_slice(n_items: int, i: int, n: int) -> slice:
    """The I-th of N contiguous, nearly equal slices: concatenating the shards in order gives the whole list."""
    return slice(i * n_items // n, (i + 1) * n_items // n)


def shard_part_path(out: Path, i: int, n: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{i}-of-{n}{out.suffix}")


def check_parts(parts: Sequence[str | Path], out: Path, what: str,
                settings: tuple[tuple[str, str], ...]) -> list[tuple[Path, dict]]:
    """The parts' ``.json`` records in shard order, once they are shown to be shards 0..N-1 of one job with the
    same ``settings`` (keys of the records, with what to call them); anything else is one clear error."""
    infos = []
    for p in map(Path, parts):
        meta = Path(f"{p}.json")
        if not p.is_file() or not meta.is_file():
            raise BadData(f"{p}: {'no such file' if not p.is_file() else 'no ' + meta.name + ' beside it'}; "
                          f"merge takes the files written by `gzmorph {what} --shard I/N`, with their .json")
        try:
            info = json.loads(meta.read_text())
        except ValueError as e:
            raise BadData(f"{meta}: not valid JSON ({e})") from None
        if not info.get("shard"):
            raise BadData(f"{p} was not written with --shard I/N; there is nothing to merge it with")
        if p.resolve() == out.resolve():
            raise BadArgument(f"{out} is one of the parts; write the merged file elsewhere")
        infos.append((p, info))
    n = {info["shard"][1] for _, info in infos}
    if len(n) != 1:
        raise BadData(f"the parts come from splits into different numbers of shards: {sorted(n)}")
    n = n.pop()
    got = sorted(info["shard"][0] for _, info in infos)
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        dupes = sorted({i for i in got if got.count(i) > 1})
        raise BadData(f"need each of the {n} shards exactly once: "
                      + (f"missing shard(s) {missing}" if missing else "") + ("; " if missing and dupes else "")
                      + (f"shard(s) {dupes} given twice" if dupes else ""))
    for key, name in (("inputs_sha256", "image lists"), *settings):
        if len({str(info.get(key)) for _, info in infos}) != 1:
            raise BadData(f"the shards were made from different {name}; make all shards of one job with the same "
                          f"command")
    return sorted(infos, key=lambda pi: pi[1]["shard"][0])


def merge_shards(parts: Sequence[str | Path], out: str | Path) -> PredictionSummary:
    """Join the tables of ``predict --shard I/N`` (any order given) into one, in shard order, in the format of
    ``out``'s suffix (the parts' own: CSV, Parquet or FITS).

    Refused unless the parts are exactly shards 0..N-1 of the same image list, predicted with the same weights,
    TTA and columns (each part's ``.json`` records these); nothing is written then. CSV and Parquet stream: constant
    memory for any size.
    """
    from .table_writer import TableWriter, output_format

    out = check_output_file(out, "submission.csv")
    suffix = output_format(out)
    infos = check_parts(parts, out, "predict", (("weights_sha256", "weights"), ("tta", "--tta settings"),
                                                 ("precision", "--precision settings"), ("columns", "--columns"),
                                                 ("spread", "--spread"), ("interval", "--interval levels"),
                                                 ("calibration", "calibrations")))
    wrong = [str(p) for p, _ in infos if p.suffix.lower() != suffix]
    if wrong:
        raise BadArgument(f"the parts are not {suffix} files like {out} ({wrong[0]}); merge into the parts' own format")
    n_rows = 0

    def write_csv(tmp: Path) -> None:
        nonlocal n_rows
        with open(infos[0][0], newline="") as f:
            header = f.readline().rstrip("\r\n")  # the Kaggle header, the named table's, or a fine-tuned run's
        with open(tmp, "w", newline="") as dst:
            dst.write(header + "\n")
            for p, _ in infos:
                with open(p, newline="") as src:
                    if src.readline().rstrip("\r\n") != header:
                        raise BadData(f"{p}: its header differs from {infos[0][0]}'s")
                    for line in src:
                        if line.strip():
                            dst.write(line if line.endswith("\n") else line + "\n")
                            n_rows += 1

    def write_table(tmp: Path) -> None:
        nonlocal n_rows
        from .answer_table import describe

        writer = TableWriter(tmp, suffix, describe)
        try:
            for p, _ in infos:
                frame = read_table(p)
                writer.write(frame)
                n_rows += len(frame)
        finally:
            writer.close()

    def write(tmp: Path) -> None:
        (write_csv if suffix == ".csv" else write_table)(tmp)
        expected = sum(info["n_predicted"] for _, info in infos)
        if n_rows != expected:  # a part edited or cut short after it was written; raised before `out` is replaced
            raise BadData(f"the parts hold {n_rows} rows but their .json files record {expected}; re-predict them")

    atomic_write(out, write)
    skipped = [(s["path"], s["why"]) for _, info in infos for s in info["skipped"]]
    first = infos[0][1]
    atomic_write_json(Path(f"{out}.json"), {
        **{k: first[k] for k in ("run", "weights", "weights_sha256", "gzmorph_version", "torch_version", "tta",
                                   "precision", "runtime", "format", "columns", "source", "spread", "interval",
                                   "calibration") if k in first},
        "table": str(out), "n_predicted": n_rows, "n_skipped": len(skipped),
        "skipped": [{"path": p, "why": w} for p, w in skipped], "seconds": max(i["seconds"] for _, i in infos),
        "shard": None, "merged_from": [str(p) for p, _ in infos], "n_inputs": first["n_inputs_all_shards"],
        "n_inputs_all_shards": first["n_inputs_all_shards"], "inputs_sha256": first["inputs_sha256"]})
    return PredictionSummary(out, n_rows, skipped, max(i["seconds"] for _, i in infos), first["weights_sha256"])


def read_table(path: Path):
    """A Parquet or FITS table written by ``predict``, as a pandas DataFrame (text columns as text)."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    from astropy.table import Table

    table = Table.read(path, format="fits", character_as_bytes=False)
    return pd.DataFrame({name: table[name].data.tolist() if table[name].dtype.kind in "US" else table[name].data
                         for name in table.colnames})
