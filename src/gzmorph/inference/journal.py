"""Long prediction and embedding jobs that survive being killed: rows are appended to hidden partial files beside
the output, and after a chunk of images, at most once a second, the files are fsynced and a small journal records
how far the job got (images done, bytes of each file, skipped images). Once a second, not after every chunk: a GPU
predicts 80 chunks of 256 a second, and three fsyncs each would cost more than the predictions; a kill then loses
at most a second of work. The same command run again finds the journal and continues from
there; a different job (other images, weights, views, precision, columns, interval or calibration) finds it too and
is refused in one line instead of mixing two jobs' rows.

A kill can land between a write and the journal's next record: the bytes past what the journal records are cut off
on resume, and those images are predicted again. Chunks keep their boundaries (they start at multiples of the
batch size), so with the same ``--batch-size`` every image is computed in the same batch as in an uninterrupted run
and the resumed file is byte for byte the same (another batch size is allowed: it moves only the last bits of
some numbers, as batching does anywhere).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadArgument
from ..fsio import atomic_write_json

log = logging.getLogger("gzmorph")


def _seconds_from_environment() -> float:
    text = os.environ.get("GZMORPH_JOURNAL_SECONDS", "1")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise BadArgument(f"GZMORPH_JOURNAL_SECONDS must be 0 (record every chunk) or more seconds, got {text!r}")
    return seconds


def partial_path(out: Path, part: str = "") -> Path:
    """Where a job writing ``out`` keeps its rows until it is complete (hidden, beside ``out``)."""
    return out.with_name(f".{out.name}{part}.partial")


@dataclass
class Journal:
    """Progress of one job writing ``out``: ``files`` (name -> partial path) are appended to; ``job`` is what makes
    the job this job (compared on resume)."""

    out: Path
    job: dict
    files: dict[str, Path]
    done: int = 0  # images of the input list finished (written or skipped)
    rows: int = 0  # rows written
    skipped: list[tuple[str, str]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # bytes of each file as of the last record
    extra: dict = field(default_factory=dict)  # what else the caller needs to resume (e.g. a feature width)
    # seconds between durable records; GZMORPH_JOURNAL_SECONDS=0 records after every chunk
    every: float = field(default_factory=lambda: _seconds_from_environment())
    _recorded_at: float = field(default=float("-inf"), repr=False)

    @property
    def path(self) -> Path:
        return Path(f"{partial_path(self.out)}.json")

    @classmethod
    def start(cls, out: Path, job: dict, names: list[str], *, restart: bool = False) -> "Journal":
        """The journal of the job writing ``out``: resumed where a killed run of the same job left it, or new.
        A partial job of another kind is refused (``restart`` discards it instead)."""
        files = {name: partial_path(out, f".{name}" if name != "rows" else "") for name in names}
        journal = cls(out, job, files)
        if journal.path.is_file() and not restart:
            try:
                saved = json.loads(journal.path.read_text())
            except ValueError:
                saved = None
            if saved is not None:
                journal._resume(saved)
                return journal
        journal.discard()
        for path in files.values():
            path.write_bytes(b"")
        journal.record(final=True)
        return journal

    def _resume(self, saved: dict) -> None:
        differ = [k for k in sorted(set(self.job) | set(saved.get("job", {})))
                  if self.job.get(k) != saved.get("job", {}).get(k)]
        if differ:
            what = ", ".join(f"{k} ({saved.get('job', {}).get(k)!r} then, {self.job.get(k)!r} now)" for k in differ[:3])
            raise BadArgument(f"{self.out}: a partial run of another job is here ({self.path.name}: {what}); repeat "
                              f"that command to finish it, or pass --restart to discard it and start this one")
        self.done, self.rows = saved["done"], saved["rows"]
        self.skipped = [tuple(s) for s in saved["skipped"]]
        self.offsets, self.extra = saved["offsets"], saved.get("extra", {})
        short = [p for name, p in self.files.items() if not p.is_file() or p.stat().st_size < self.offsets[name]]
        if short:  # rows the journal says are durable are not there: the files were touched, or the job had finished
            raise BadArgument(f"{self.out}: the partial run's {short[0].name} is missing or shorter than its journal "
                              f"records (if {self.out.name} is complete, the job had finished), so it cannot be "
                              f"resumed; pass --restart to start again")
        for name, path in self.files.items():
            with open(path, "r+b") as f:  # bytes written after the last record belong to images done again now
                f.truncate(self.offsets[name])
        log.warning("resuming %s: %d of %d images were done by an earlier run (%d rows); --restart starts over",
                    self.out, self.done, self.job.get("n_inputs", 0), self.rows)

    def record(self, done: int | None = None, rows: int | None = None,
               skipped: list[tuple[str, str]] | None = None, *, final: bool = False) -> None:
        """After the caller has written (and flushed) a chunk: make its bytes durable, then say so in the journal --
        if ``every`` seconds have passed since the last record, or ``final``. Bytes written after a record are cut
        off on resume and their images done again, so the files and the journal always agree."""
        if done is not None:
            self.done, self.rows, self.skipped = done, rows, list(skipped)
        now = time.monotonic()
        if not final and now - self._recorded_at < self.every:
            return
        self._recorded_at = now
        for name, path in self.files.items():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            self.offsets[name] = path.stat().st_size
        atomic_write_json(self.path, {"job": self.job, "done": self.done, "rows": self.rows,
                                      "skipped": [list(s) for s in self.skipped], "offsets": self.offsets,
                                      "extra": self.extra})

    def discard(self) -> None:
        """Forget the partial job: its files and its record."""
        for path in [*self.files.values(), self.path]:
            path.unlink(missing_ok=True)
