"""What to predict: a folder of images (optionally searched recursively), one image, a text file listing image
paths, or a catalogue (a CSV with an id column, and a column of image paths or a folder of ``<id>.<suffix>`` files)
whose other columns (RA, Dec, ...) travel to the output.

Everything that is left out before decoding is said: a catalogue row whose image is missing stops the job with its
line named, or with ``skip_bad`` is counted in ``skipped`` like an undecodable image.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadArgument, BadData
from .images import find_images, image_stem
from .layout import ID_COLUMN, ImageFolder

log = logging.getLogger("gzmorph")

LIST_SUFFIXES = (".txt", ".lst", ".list")  # one image path per line
CATALOGUE_SUFFIXES = (".csv", ".tsv")


@dataclass
class Inputs:
    """The images of one job, in output order, each with its output id; for a catalogue, its other columns."""

    paths: list[Path]
    ids: list[str]
    id_column: str = ID_COLUMN
    extra: object = None  # a pandas DataFrame of the catalogue's other columns, one row per path; None otherwise
    # (catalogue row or file, why) left out before decoding: rows without an image, a folder's files that are not
    # images, and images in subfolders not searched
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: slice) -> "Inputs":
        """A contiguous slice of the job (one shard)."""
        return Inputs(self.paths[rows], self.ids[rows], self.id_column,
                      None if self.extra is None else self.extra.iloc[rows].reset_index(drop=True), [], self.source)

    def check_not_empty(self, doing: str) -> None:
        """A catalogue whose every row was left out (``--skip-bad``) is one error, not an empty output."""
        if not self.paths:
            raise BadData(f"{self.source}: none of its {len(self.skipped)} rows has an image to {doing} (listed above)")

    def skipped_in(self, shard: tuple[int, int] | None) -> list[tuple[str, str]]:
        """The rows left out before decoding, as one shard of the job reports them: shard 0 lists them all, so the
        merged shards list each once."""
        return list(self.skipped) if not shard or shard[0] == 0 else []

    def digest(self) -> str:
        """What the job is: the files and their ids in order (a shard, merge or resume is checked against it)."""
        h = hashlib.sha256()
        for p, i in zip(self.paths, self.ids):
            # files named by their id hash as they always did, so shards made by earlier versions still merge
            h.update((f"{p}\n" if i == image_stem(p) else f"{p}\t{i}\n").encode())
        return h.hexdigest()


def collect_inputs(source: str | Path, *, recursive: bool = False, id_column: str | None = None,
                   path_column: str | None = None, images: str | Path | None = None,
                   skip_bad: bool = False) -> Inputs:
    """The job for ``source``; see the module. Two files that would give the same id (``1.jpg`` and ``1.png``) are
    an error: the output would hold that id twice."""
    source = Path(source)
    catalogue_flags = id_column is not None or path_column is not None or images is not None
    left_out: list[tuple[str, str]] = []  # files of a folder that are not predicted, with why
    if source.is_dir():
        if catalogue_flags:
            raise BadArgument("--id-column, --path-column and --images are for a catalogue (a .csv); "
                              f"{source} is a folder of images")
        listing = find_images(source, recursive=recursive)
        paths, left_out = listing.images, listing.left_out()
    elif not source.exists():
        raise BadData(f"{source}: no such folder or file")
    elif source.suffix.lower() in CATALOGUE_SUFFIXES:
        return read_catalogue(source, id_column=id_column, path_column=path_column, images=images,
                              skip_bad=skip_bad)
    elif source.suffix.lower() in LIST_SUFFIXES:
        base = source.parent
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
        paths = [p if p.is_absolute() else base / p for p in paths]
        if not paths:
            raise BadData(f"{source}: the file list is empty")
    else:
        paths = [source]
    if catalogue_flags and not source.is_dir():
        raise BadArgument(f"--id-column, --path-column and --images are for a catalogue ({', '.join(CATALOGUE_SUFFIXES)}"
                          f"); {source} is not one")
    ids = [image_stem(p) for p in paths]
    seen: dict[str, Path] = {}
    for p, gid in zip(paths, ids):
        if gid in seen:
            raise BadData(f"{source}: two files claim GalaxyID {gid}: {seen[gid]} and {p}; keep one of them")
        seen[gid] = p
    return Inputs(paths, ids, skipped=left_out, source=str(source))


def read_catalogue(path: Path, *, id_column: str | None, path_column: str | None, images: str | Path | None,
                   skip_bad: bool) -> Inputs:
    """A catalogue CSV: ``id_column`` (default ``GalaxyID``) names each galaxy; its image is ``path_column``'s cell
    (relative to ``images``, else to the catalogue's folder) or, without a path column, ``<id>.<suffix>`` in
    ``images``. With ``images`` given, every image must lie inside it: a path that climbs out (``../..``) or points
    elsewhere is refused, so a catalogue from someone else reads only the folder you named."""
    import pandas as pd

    try:
        # Ids and paths stay text exactly as written (leading zeros, 19-digit SDSS objids); the other columns are
        # parsed as pandas would (numbers stay numbers in Parquet and FITS).
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        columns = list(pd.read_csv(path, nrows=0, sep=sep).columns)
        id_column = id_column or ID_COLUMN
        # Nullable dtypes: an integer column with an empty cell stays integer (a 19-digit objid would lose digits as
        # float64), and empty cells stay missing, never 0 or NaN-as-text.
        table = pd.read_csv(path, sep=sep, dtype={c: str for c in (id_column, path_column) if c in columns},
                            dtype_backend="numpy_nullable")
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise BadData(f"{path}: not a readable CSV catalogue ({e})") from None
    for flag, name in (("--id-column", id_column), ("--path-column", path_column)):
        if name is not None and name not in columns:
            raise BadData(f"{path}: no column {name!r} (its columns: {', '.join(map(str, columns[:20]))}"
                          f"{' ...' if len(columns) > 20 else ''}); name the right one with {flag}")
    if not len(table):
        raise BadData(f"{path}: the catalogue has no rows")
    if path_column is None and images is None:
        raise BadArgument(f"{path}: say where its images are: --path-column COLUMN (a column of image paths) or "
                          f"--images DIR (a folder of files named <{id_column}>.jpg, .png, .fits ...)")
    ids = table[id_column].fillna("").astype(str).str.strip()
    empty = ids == ""
    if empty.any():
        raise BadData(f"{path}: line {int(empty.to_numpy().argmax()) + 2}: empty {id_column}; every row needs an id")
    dupes = ids[ids.duplicated()]
    if len(dupes):
        raise BadData(f"{path}: {id_column} {dupes.iloc[0]} appears more than once ({dupes.nunique()} duplicated "
                      f"id(s)); each galaxy must have one row")
    root = Path(images) if images is not None else None
    if root is not None and not root.is_dir():
        raise BadData(f"{root}: --images is not a folder")
    folder = ImageFolder(root) if root is not None and path_column is None else None
    base = root if root is not None else path.parent
    keep, paths, skipped = [], [], []
    for row, gid in enumerate(ids):
        line = row + 2  # the header is line 1
        if folder is not None:
            found = folder.image_path(gid)
            why = None if found is not None else f"no image named {gid}.<jpg|png|fits|tif ...> in {root}"
        else:
            cell = table[path_column].iloc[row]
            cell = "" if pd.isna(cell) else str(cell).strip()
            if not cell:
                found, why = None, f"empty {path_column}"
            else:
                found = Path(cell) if Path(cell).is_absolute() else base / cell
                if root is not None and not _inside(found, root):
                    raise BadData(f"{path}: line {line}: {path_column} {cell!r} points outside --images {root}; "
                                  f"give paths inside it (or leave out --images to read paths as they are)")
                why = None if found.is_file() else f"{found}: no such file"
        if why is None:
            keep.append(row)
            paths.append(found)
            continue
        if not skip_bad:
            raise BadData(f"{path}: line {line} ({id_column} {gid}): {why}; fix the catalogue, or pass --skip-bad "
                          f"to leave such rows out (they are counted and listed)")
        log.warning("skipping %s line %d (%s %s): %s", path.name, line, id_column, gid, why)
        skipped.append((f"{path}:{line}", why))
    # Every other column travels to the output, the image paths too (which file each row came from).
    extra = table.drop(columns=[id_column]).iloc[keep].reset_index(drop=True)
    return Inputs(paths, [ids.iloc[k] for k in keep], id_column, extra, skipped, str(path))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
