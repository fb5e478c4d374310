"""One live process per run folder: an OS lock that a run holds for its whole life.

The lock is ``flock`` on ``.<name>.lock`` *beside* the run folder ``<name>`` (in its parent, like the
``.<name>.new`` of ``--force``). Beside, not inside: it can be taken before the folder exists, and it
stays where it is while ``--force`` swaps a replacing run in by renaming folders, so that one lock
covers the run folder, the replacing run and the swap. The kernel releases it when the process ends,
however it ends (SIGKILL included). The file holds one JSON line naming the holder (PID, host, start
time); while held, its modification time is refreshed every :data:`HEARTBEAT_S` seconds. A run that
ends normally (or with an error) removes it; one that was killed leaves it behind, *stale*.

What a new run does with an existing lock file (docs/reliability.md):

- the kernel lock is held: the folder is in use; refused in one line naming the holder's PID and host.
- the kernel lock is free and the file names this host: its process ended without removing it; the new
  run takes it over and says so.
- the file names another host: on a shared file system ``flock`` may not reach across machines (NFS
  without lock support, Lustre's ``localflock``), so a free kernel lock proves nothing. The lock is
  trusted until its heartbeat is older than :data:`STALE_AFTER_S`, then taken over with a note.
- ``flock`` is not supported at all (ENOLCK, EOPNOTSUPP): the file's record decides alone, as above,
  with a PID check on this host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from groupdistil.errors import UserError

#: Seconds between two refreshes of a held lock file's modification time.
HEARTBEAT_S = 30.0
#: A lock file of another host whose heartbeat is older than this is stale (clocks may differ a little).
STALE_AFTER_S = 180.0
_HOST = socket.gethostname()
#: File descriptors of the locks this process holds: a forked child (a DataLoader worker) closes its
#: copies, so that only this process keeps the lock alive.
_held: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(root: Path) -> Path:
    """Where the lock of the run folder ``root`` lives: ``.<name>.lock`` beside it (symlinks resolved,
    so that two spellings of one folder share one lock)."""
    real = Path(os.path.realpath(root))
    return real.parent / f".{real.name}.lock"


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the process that holds (or held) it."""

    pid: int | None
    host: str | None
    started: str | None
    age_s: float  # seconds since the file's last heartbeat

    def describe(self) -> str:
        who = f"PID {self.pid} on host {self.host}" if self.pid is not None else "a process that left no record"
        return who + (f", started {self.started}" if self.started else "")


def _read(fd: int) -> Holder:
    age = max(0.0, time.time() - os.fstat(fd).st_mtime)
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid, host, started = int(record["pid"]), str(record["host"]), str(record.get("started", ""))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return Holder(None, None, None, age)
    return Holder(pid, host, started or None, age)


def _in_use(root: Path, path: Path, holder: Holder, extra: str = "") -> UserError:
    return UserError(f"`out` {root}: in use by another run ({holder.describe()}{extra}); wait for it to end "
                     f"or stop it; its lock is {path}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _judge(root: Path, path: Path, holder: Holder, kernel: bool) -> str | None:
    """A note when taking over a stale lock (None for a fresh file); a UserError when the lock is live
    by its record although the kernel lock was free (``kernel``) or unavailable."""
    if holder.pid is None:
        return None
    if holder.host == _HOST:
        if not kernel and _pid_alive(holder.pid) and holder.age_s < STALE_AFTER_S:
            raise _in_use(root, path, holder)
        return f"warning: the lock of {root} names {holder.describe()}, which has ended; taking it over"
    ago = f"; its heartbeat is {holder.age_s:.0f} s old"
    if holder.age_s < STALE_AFTER_S:
        raise _in_use(root, path, holder, f"{ago}, and a lock from another host is trusted for "
                                          f"{STALE_AFTER_S:.0f} s after its last heartbeat")
    return (f"warning: the lock of {root} names {holder.describe()}{ago} (more than {STALE_AFTER_S:.0f} s): "
            "that run has ended; taking it over")


def _flock(fd: int, root: Path, path: Path) -> bool:
    """Take the kernel lock; False where the file system has no flock. Raises when it is held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(root, path, _read(fd)) from None
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def check_unlocked(root: Path) -> None:
    """Refuse, in one line naming the holder, a run folder that another live run holds; changes nothing."""
    path = lock_path(root)
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return  # no lock (or no folder there at all: the folder checks say what is wrong)
    try:
        here = os.fstat(fd)
        if any((os.fstat(h).st_dev, os.fstat(h).st_ino) == (here.st_dev, here.st_ino) for h in _held):
            return  # this process holds it (a run planning again under its own lock)
        _judge(root, path, _read(fd), _flock(fd, root, path))
    finally:
        os.close(fd)  # releases the kernel lock taken to look


class RunLock:
    """The held lock of one run folder (see the module's docstring); :meth:`release` when the run ends.

    ``notice`` says that a stale lock was taken over (None otherwise).
    """

    def __init__(self, path: Path, fd: int, notice: str | None) -> None:
        self.path, self.fd, self.notice = path, fd, notice
        _held.add(fd)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="groupdistil-lock", daemon=True)
        self._beat.start()

    @classmethod
    def acquire(cls, root: Path) -> RunLock:
        """Take the lock of run folder ``root``, or raise a UserError naming the live holder."""
        path = lock_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                kernel = _flock(fd, root, path)
                if not _same_file(fd, path):  # its holder removed it as we opened it: the next one
                    os.close(fd)
                    continue
                notice = _judge(root, path, _read(fd), kernel)
                record = {"pid": os.getpid(), "host": _HOST,
                          "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            return cls(path, fd, notice)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a network file system's hiccup: the next beat tries again
                os.utime(self.fd)

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent). The file goes first, while the lock
        is still held: a process that opened it meanwhile finds it gone and opens the next one."""
        if self.fd < 0:
            return
        self._stop.set()
        self._beat.join()
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # the kernel lock below is what counts; a file left behind is stale and explained
        _held.discard(self.fd)
        os.close(self.fd)
        self.fd = -1
