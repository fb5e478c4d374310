"""Errors that mean "the user gave us something wrong".

Library functions raise :class:`UserError` (a ``ValueError``) with a message that names the file,
row, column or option and says what was expected and what was found. The command line turns it into
one line on stderr and exit code 2; nothing else in the code base prints tracebacks for user mistakes.
"""

from __future__ import annotations

import errno


class UserError(ValueError):
    """Bad input from the user: a file, value or option that is not what we expected.

    The message is always one line: line breaks that arrive with user data (a column name, a value)
    are escaped, so the command line's "one line, exit 2" holds whatever the input held.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(_worker_message(str(message)).replace("\r", "\\r").replace("\n", "\\n"))


def _worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker, else ``text``.

    torch re-raises a worker's exception as ``type("Caught <type> in DataLoader worker process k.\n
    Original Traceback ...")`` (``torch._utils.ExceptionWrapper``); its last line is
    ``<module>.<type>: <message>``, and a UserError message is one line, so that line holds it whole.
    """
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors about
    state dicts or configs that do not fit: torch's and pydantic's messages run over many lines."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class DataError(UserError):
    """A dataset file, column, row or image that is missing or malformed."""


class ConfigError(UserError):
    """A configuration key or value that is unknown or of the wrong type."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or not written by groupdistil."""


class StorageError(UserError):
    """A file could not be written: no space left, a read-only file system, a quota, a permission.

    The message is one line naming the file and the operating system's error (``[ENOSPC] No space
    left on device``). The command line prints it and exits with :data:`STORAGE_EXIT_CODE`, so a
    job script can tell "free space, then ``--resume``" from "fix the command" (exit 2). A run
    folder's files are written atomically, so the file named still holds its previous version.
    """

    @classmethod
    def from_os_error(cls, path: object, e: OSError) -> StorageError:
        """The error for ``e``, raised while writing ``path``."""
        name = errno.errorcode.get(e.errno or 0)
        why = e.strerror or str(e) or type(e).__name__
        return cls(f"{path}: cannot write: {f'[{name}] ' if name else ''}{why}")


#: The exit code of a :class:`StorageError` (BSD sysexits' EX_IOERR: "an error occurred doing I/O").
STORAGE_EXIT_CODE = 74


class NumericalError(RuntimeError):
    """Training produced a non-finite loss or logit; the message names the step and the last good
    checkpoint. The command line prints it as one line and exits with code 3."""
