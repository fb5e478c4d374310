"""Which image files already passed the header check, so that the next run does not read them again.

Reading an image's header with Pillow costs about 0.1 ms (its JPEG marker parser is Python), so the
check of :meth:`~groupdistil.data.images.ImageFiles.check` cost CIFAR-10's 60,000 files about 7.5 s at
the start of every run. ``os.stat`` costs about 3 us. After a split's files pass, their identities
and versions (device, inode, size, modification and status-change times in nanoseconds) are recorded
in one file of the record folder; a later check reads again only the files whose ``stat`` differs.

Why this is safe: a file that is rewritten, truncated, replaced (a new inode) or renamed onto has a
new status-change time, which no user call can set back (``utime`` sets the modification time and
itself changes the status-change time), so a changed file is never taken for a checked one. The record
only skips a header read: a file whose pixel data is damaged is still named when it is decoded, as
without the record. A record that cannot be read, or that does not fit the split, is ignored; one that
cannot be written is not written (the run goes on). Nothing in it is executed (``np.load`` without
pickles).

The folder: ``$GROUPDISTIL_HEADER_RECORD`` (empty: no record), else ``~/.cache/groupdistil/image-headers``.
Deleting it costs one full check on the next run of each dataset.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from pathlib import Path

import numpy as np

from groupdistil._omp import local_cores

ENV = "GROUPDISTIL_HEADER_RECORD"
#: The row of a path that ``stat`` cannot read, or that is not a regular file: always checked.
UNKNOWN = np.iinfo(np.uint64).max


def record_folder() -> Path | None:
    """Where the records live (None: not recorded)."""
    env = os.environ.get(ENV)
    if env is not None:
        return Path(env) if env.strip() else None
    return Path.home() / ".cache" / "groupdistil" / "image-headers"


def file_versions(paths: np.ndarray) -> np.ndarray:
    """(N, 5) uint64: each file's (device, inode, size, mtime ns, ctime ns); :data:`UNKNOWN` in every
    column of a path that is missing, unreadable, or not a regular file."""
    out = np.full((len(paths), 5), UNKNOWN, dtype=np.uint64)
    for i, p in enumerate(paths):
        try:
            s = os.stat(str(p))
        except (OSError, ValueError):  # ValueError: a NUL in the path
            continue
        if stat.S_ISREG(s.st_mode):
            out[i] = (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
    return out


def check_unrecorded(paths: np.ndarray, check: Callable[[str], None], folder: Path | None) -> int:
    """``check(path)`` for every path of ``paths`` (a split's files, in order) that the record in
    ``folder`` (None: no record) does not hold as checked in its present version; then the record
    holds them all. Returns how many were checked. ``check`` raises on a bad file, and a split with a
    bad file is not recorded."""
    versions = file_versions(paths)  # before the checks: a file changed during them differs next time
    record = folder / f"{_key(paths)}.npy" if folder is not None else None
    known = _read(record, versions.shape) if record is not None else None
    if known is None:
        todo = np.arange(len(paths))
    else:
        todo = np.flatnonzero((versions != known).any(axis=1) | (versions == UNKNOWN).all(axis=1))
    check_all([str(paths[i]) for i in todo], check, local_cores())
    if record is not None and len(todo):
        _write(record, versions)
    return len(todo)


#: Files from which the checks run in worker processes (below, starting them costs more than it saves).
PARALLEL_FROM = 4096


def check_all(paths: list[str], check: Callable[[str], None], processes: int) -> None:
    """``check(path)`` for every path, in ``processes`` forked worker processes when there are many
    (the check is Python, one core each: CelebA's 202,599 headers take about 25 s on one). A bad file
    raises what ``check`` raised for the first bad file in ``paths``' order, as one process would."""
    if processes < 2 or len(paths) < PARALLEL_FROM or "fork" not in multiprocessing.get_all_start_methods():
        _check_chunk(check, paths)
        return
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
    try:
        # Contiguous chunks, a few per process, read back in order: the first chunk that failed holds
        # the first bad file.
        futures = [pool.submit(_check_chunk, check, list(chunk))
                   for chunk in np.array_split(np.asarray(paths), 4 * processes) if len(chunk)]
        for f in futures:
            f.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_chunk(check: Callable[[str], None], paths: list[str]) -> None:
    for p in paths:
        check(p)


def _key(paths: np.ndarray) -> str:
    """The record's name: a hash of the split's paths in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(str(p)) + b"\0")
    return h.hexdigest()[:32]


def _read(record: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        known = np.load(record, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return known if known.dtype == np.uint64 and known.shape == shape else None


def _write(record: Path, versions: np.ndarray) -> None:
    """Atomically (a finished temporary file renamed onto it); silently not at all where the folder
    cannot be written: the record saves time, a run never fails for it."""
    tmp = None
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=".tmp-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, versions, allow_pickle=False)
        os.replace(tmp, record)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
