"""Answer tables to files, in the format ``-o``'s suffix names: ``.csv``, ``.parquet`` (pyarrow) or ``.fits`` (an
astropy binary table with a description of every column in its header, as TOPCAT reads them).

CSV and Parquet are written in pieces as the galaxies are predicted, so millions of rows need constant memory.
A FITS table's header holds its row count, so its rows are kept until the end (about 0.4 kB a galaxy for the
named table): for millions of galaxies write Parquet or CSV, or shard the job.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import BadArgument, BadData, GzmorphError

FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".fits": "FITS binary table"}
FLOAT_FORMAT = "%.6f"  # Kaggle's submissions and gzmorph's CSVs have always had 6 decimals


def output_format(out: str | Path) -> str:
    """The suffix of ``out`` that picks its format, or one clear error naming those there are."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise BadArgument(f"{out}: unknown output format {suffix or '(no suffix)'!r}; end the file name with one of "
                          + ", ".join(f"{s} ({name})" for s, name in FORMATS.items()))
    if suffix == ".parquet":
        _need("pyarrow", "parquet")
    if suffix == ".fits":
        _need("astropy", "fits")
    return suffix


def _need(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise GzmorphError(f"writing {extra.upper() if extra == 'fits' else extra.capitalize()} needs {module}: "
                           f"pip install 'gzmorph[{extra}]' (or write a .csv)")


class TableWriter:
    """``write(columns)`` piece after piece (dicts of name -> one value per row, or pandas DataFrames, with the same
    columns each time), then ``close()``."""

    def __init__(self, path: Path, suffix: str, describe=None, *, append: bool = False):
        """``append`` (CSV only): continue a file that a killed job began (its header is there if it has bytes)."""
        self.path, self.suffix, self.describe = Path(path), suffix, describe or (lambda column: "")
        self.rows = 0
        self._parquet = None
        self._pieces: list = []
        self._csv = open(self.path, "a" if append else "w", newline="") if suffix == ".csv" else None
        self._header_done = append and self.path.stat().st_size > 0

    def flush(self) -> None:
        if self._csv is not None:
            self._csv.flush()

    def write(self, table) -> None:
        columns = _as_columns(table)
        n = len(next(iter(columns.values()))) if columns else 0
        if self.suffix == ".csv":
            out = csv.writer(self._csv, lineterminator="\n")
            if not self._header_done:
                out.writerow(columns)
                self._header_done = True
            out.writerows(zip(*(_csv_cells(v) for v in columns.values())))
        elif self.suffix == ".parquet":
            import pandas as pd
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(str(self.path), arrow.schema)
            try:
                self._parquet.write_table(arrow.cast(self._parquet.schema))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                # the pieces disagree (merging parts of different jobs, a column's type changing between chunks)
                raise BadData(f"{self.path}: the rows do not fit the table's columns ({e})") from None
        else:
            import pandas as pd

            self._pieces.append(pd.DataFrame(columns))
        self.rows += n

    def write_header_only(self, table) -> None:
        """An empty job (a shard holding no images) still gets a file with the columns."""
        if self.rows == 0 and not self._header_done and not self._pieces and self._parquet is None:
            self.write({name: values[:0] for name, values in _as_columns(table).items()})

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._parquet is not None:
            self._parquet.close()
        if self.suffix == ".fits":
            import pandas as pd

            write_fits(pd.concat(self._pieces, ignore_index=True) if self._pieces else pd.DataFrame(), self.path,
                       self.describe)


def _as_columns(table) -> dict:
    """A dict of columns from a dict or a pandas DataFrame (a merged part read back)."""
    return table if isinstance(table, dict) else {name: table[name].array for name in table.columns}


def _csv_cells(values) -> list[str]:
    """One column as CSV text. gzmorph's own numbers are float32 and get 6 decimals (as Kaggle's file and every
    gzmorph CSV); a catalogue's other numbers keep every digit they had (RA, Dec, a redshift of 1e-5, a 19-digit
    objid): rounding them would change the user's data. Missing cells (None, NaN, pandas' NA) stay empty."""
    if isinstance(values, np.ndarray) and values.dtype == np.float32:
        return [f"{v:.6f}" for v in values.tolist()]
    out = []
    for v in (values.tolist() if hasattr(values, "tolist") else values):
        if v is None or type(v).__name__ == "NAType" or (isinstance(v, float) and v != v):  # v != v: NaN
            out.append("")
        elif isinstance(v, float):
            out.append(repr(v))
        else:
            out.append(str(v))
    return out


def check_fits_text(names, values) -> None:
    """FITS headers and text columns hold ASCII only: a catalogue's column name or text, or an id, that is not ASCII
    is refused before any galaxy is predicted (a table that could not be written at the end would waste the job)."""
    for name in names:
        if not str(name).isascii():
            raise BadArgument(f"column {name!r}: a FITS table's column names are ASCII only; rename it, or write "
                              f".parquet or .csv")
    for column, cells in values:
        bad = next((v for v in cells if isinstance(v, str) and not v.isascii()), None)
        if bad is not None:
            raise BadArgument(f"column {column!r} holds {bad!r}: a FITS table's text is ASCII only; write .parquet "
                              f"or .csv")


def write_fits(frame, path: Path, describe) -> None:
    """A FITS binary table: text columns as fixed-width strings, each column's description as its ``TCOMMn`` card
    (TOPCAT shows them) and the fractions' dimensionless unit left empty, as the FITS standard wants."""
    from astropy.io import fits
    from astropy.table import Table

    # Text becomes fixed-width strings, a catalogue's missing numbers masked cells (TNULL), never a made-up value.
    table = Table.from_pandas(frame)
    try:
        hdu = fits.table_to_hdu(table)
    except (UnicodeEncodeError, ValueError) as e:  # checked up front by check_fits_text; this is the last guard
        raise BadData(f"{path}: cannot be written as a FITS table ({e}); write .parquet or .csv") from None
    for k, name in enumerate(table.colnames, start=1):
        text = describe(name)
        if text:  # one 80-character card: a longer text is cut at a word, the whole of it is in the README
            hdu.header[f"TCOMM{k}"] = text if len(text) <= 68 else text[:65].rsplit(" ", 1)[0] + "..."
    hdu.header["ORIGIN"] = "gzmorph"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
