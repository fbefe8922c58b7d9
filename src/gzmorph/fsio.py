"""Atomic file writes: write a temporary file, fsync it, rename it over the target.

A reader (or a resumed run) therefore sees either the old file or the new one, never half of one, even if the
process is killed or the disk fills mid-write.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from pathlib import Path
from typing import Any, Callable

from .errors import GzmorphError


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomically(tmp: Path, target: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def atomic_write(target: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``target`` atomically; clean up on any failure."""
    target = Path(target)
    _remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        replace_atomically(tmp, target)
    except OSError as e:
        _remove_quietly(tmp)
        raise write_error(target, e) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_error(target: Path, e: OSError) -> GzmorphError:
    """The one line for a file that could not be written (no space, no permission): which, why, what to check."""
    return GzmorphError(f"could not write {target} ({e.strerror or e}); the previous version, if any, is intact. "
                        f"Check free space and permissions of {Path(target).parent}")


def _remove_stale_temporaries(target: Path) -> None:
    """A writer killed with SIGKILL (out of memory, a lost node) cannot clean up: its ``.NAME.tmp-PID`` would stay
    beside the target for good, as large as what it had written. The next write of the same target removes those
    whose process is gone (a PID still running is another writer's, and is left alone)."""
    with contextlib.suppress(OSError):
        for old in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
            pid = old.name.rsplit(".tmp-", 1)[1]
            if pid.isdigit() and not _running(int(pid)):
                _remove_quietly(old)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def _remove_quietly(path: Path) -> None:
    """Best-effort clean-up: a failure here (the folder is gone or is a file) must not hide the original error."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def ensure_writable_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".gzmorph-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GzmorphError(f"cannot write to {folder} ({e.strerror or e}); choose another output folder") from None
    return folder


def check_output_file(out: str | Path, example: str = "output") -> Path:
    """Fail before a long job when its output file could not be written anyway: a folder given instead of a file,
    or a parent that is a file. A parent folder that does not exist yet is made (as ``mkdir -p`` would): a user who
    names ``results/run1/answers.csv`` means that folder."""
    out = Path(out)
    if out.is_dir():
        raise GzmorphError(f"{out}: is a folder; give the file to write, e.g. {out / example}")
    blocker = next((p for p in [out.parent, *out.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise GzmorphError(f"{blocker}: is not a folder; choose an output path inside a folder")
    if not out.parent.exists():
        ensure_writable_dir(out.parent)
    return out
