"""Reading tables (CSV, TSV, whitespace text, Parquet) and checking them at the boundary, once.

Every reader goes through :class:`Table`, so every message about a bad file has the same shape:
``<file>: line <n>, column '<name>': expected <what>, got <value>``. Text files report the file's
line number (header = line 1); Parquet files report the 1-based row.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from groupdistil.errors import DataError

#: Cell values read as missing (compared lower-case, stripped), as pandas and spreadsheets write them.
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING


def _distinct_strings(values: Sequence[Any]) -> set[str] | None:
    """The distinct values when every value is a ``str``, else None.

    Only for all-str columns is a set a faithful summary: ``1``, ``1.0`` and ``True`` are equal keys
    of one set entry yet print differently. If every distinct value is a str, so is every value
    (a non-str value would be an entry of its own, or equal to a str, which no number is).
    """
    try:
        distinct = set(values)
    except TypeError:  # unhashable cells (Parquet lists)
        return None
    return distinct if all(type(v) is str for v in distinct) else None


def map_distinct(
    values: Sequence[Any], fn: Callable[[Any], Any], distinct: set[str] | None = None
) -> list[Any]:
    """``[fn(v) for v in values]``, calling ``fn`` once per distinct value of an all-str column.

    Manifest columns such as label, split or site repeat a handful of values over many rows; a
    200k-row manifest then costs a few calls of the per-cell parser instead of 200k. ``distinct``:
    the column's :func:`_distinct_strings`, when the caller has it already.
    """
    if distinct is None:
        distinct = _distinct_strings(values)
    if distinct is None or 2 * len(distinct) > len(values):
        return [fn(v) for v in values]
    memo = {v: fn(v) for v in distinct}
    return [memo[v] for v in values]


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a DataError naming it and what it should have been."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found (expected a folder)")
    return path


def file_stamp(*paths: Path) -> list[list[str | int]]:
    """[path, size, mtime_ns] of each file: part of a split's identity, so that the teacher-logit
    cache notices when the metadata it was computed from changes."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def first_existing(candidates: Sequence[Path], what: str) -> Path:
    """The first candidate that is a file; the error lists them all."""
    for p in candidates:
        if p.is_file():
            return p
    names = " or ".join(p.name for p in candidates)
    raise DataError(f"{candidates[0].parent}: {what} not found (expected {names})")


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclass
class Table:
    """Columns of one file, as read (strings from text files, Python values from Parquet).

    Attributes:
        path: the file, for messages. columns: name -> one value per row.
        lines: the file line of each row (text files), or None (Parquet: rows are numbered from 1).
    """

    path: Path
    columns: dict[str, list[Any]]
    lines: list[int] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def where(self, row: int, column: str | None = None) -> str:
        at = f"line {self.lines[row]}" if self.lines is not None else f"row {row + 1}"
        return f"{self.path}: {at}" + (f", column {column!r}" if column else "")

    def error(self, row: int, column: str, expected: str, value: Any) -> DataError:
        return DataError(f"{self.where(row, column)}: expected {expected}, got {_fmt(value)}")

    def select(self, rows: Sequence[int]) -> Table:
        """The given rows only (messages keep their original line numbers)."""
        columns = {k: [v[i] for i in rows] for k, v in self.columns.items()}
        lines = [self.lines[i] for i in rows] if self.lines is not None else None
        return Table(self.path, columns, lines)

    def has(self, name: str) -> bool:
        return name in self.columns

    def require(self, names: Iterable[str], why: str = "") -> None:
        """Raise naming the first absent column and the columns found."""
        for name in names:
            if name not in self.columns:
                found = ", ".join(map(repr, self.columns)) or "none"
                raise DataError(f"{self.path}: missing column {name!r}{why}; found columns {found}")

    def _present(self, name: str) -> tuple[list[Any], set[str] | None]:
        """The column's values, checked for missing ones, and its distinct values if all are str."""
        self.require([name])
        col = self.columns[name]
        distinct = _distinct_strings(col)
        if distinct is not None and not any(is_missing(v) for v in distinct):
            return col, distinct  # checked once per distinct value
        for i, v in enumerate(col):  # finds the first bad row
            if is_missing(v):
                raise DataError(f"{self.where(i, name)}: expected a value, got a missing value ({_fmt(v)})")
        return col, distinct

    def values(self, name: str) -> list[Any]:
        """The column's values; a missing value is an error naming its row."""
        return self._present(name)[0]

    def strings(self, name: str) -> list[str]:
        col, distinct = self._present(name)
        return map_distinct(col, lambda v: str(v).strip(), distinct)

    def ints(
        self, name: str, allowed: Collection[int] | None = None, expected: str | None = None
    ) -> np.ndarray:
        """(N,) int64; each value must be an integer (``3`` or ``3.0``) and in ``allowed`` if given."""
        col = self.values(name)
        out = np.empty(len(col), dtype=np.int64)
        what = expected or (f"one of {sorted(allowed)}" if allowed is not None else "an integer (64-bit)")
        for i, v in enumerate(col):
            n = as_int(v)
            if n is None or not _INT64_MIN <= n <= _INT64_MAX or (allowed is not None and n not in allowed):
                raise self.error(i, name, what, v)
            out[i] = n
        return out

    def floats(self, name: str) -> np.ndarray:
        """(N,) float64 of a numeric column; NaN and text are errors naming the row."""
        col = self.values(name)
        out = np.empty(len(col), dtype=np.float64)
        for i, v in enumerate(col):
            f = _as_float(v)
            if f is None:
                raise self.error(i, name, "a number", v)
            out[i] = f
        return out

    def is_numeric(self, name: str) -> bool:
        """Whether every present value of a column parses as a finite number (missing ones allowed)."""
        return all(is_missing(v) or _as_float(v) is not None for v in self.columns[name])

    def mapped(self, name: str, mapping: Mapping[str, int]) -> np.ndarray:
        """(N,) int64 codes of a column whose values must be keys of ``mapping``."""
        codes = np.empty(len(self), dtype=np.int64)
        for i, v in enumerate(self.strings(name)):
            if v not in mapping:
                raise self.error(i, name, f"one of {', '.join(map(repr, mapping))}", v)
            codes[i] = mapping[v]
        return codes

    def check_unique(self, name: str) -> None:
        """Raise naming both rows of the first duplicated value."""
        seen: dict[str, int] = {}
        for i, v in enumerate(self.strings(name)):
            if v in seen:
                raise DataError(f"{self.where(i, name)}: duplicate id {v!r} (first at {self.where(seen[v])})")
            seen[v] = i


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    f = _as_float(v)
    return int(f) if f is not None and f.is_integer() else None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --- readers ---------------------------------------------------------------------------------------


def read_delimited(path: Path, delimiter: str = ",") -> Table:
    """A CSV/TSV file with a header row. Rows with the wrong number of fields are errors."""
    require_file(path, "table")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (expected a header row)")
            header = [h.strip() for h in header]
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num}: expected {len(header)} fields, got {len(row)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable text table ({e})") from None
    return _from_rows(path, header, rows, lines)


def read_whitespace(
    path: Path, header: Sequence[str] | None, skip: int = 0, unnamed_first: str | None = None
) -> Table:
    """A whitespace-separated text file (CelebA's ``.txt`` lists).

    Args:
        header: column names, or None to take them from the first line after ``skip`` lines.
        skip: leading lines to ignore (CelebA's attribute list starts with a count).
        unnamed_first: name of a first column the header line does not name (CelebA's image ids).
    """
    require_file(path, "table")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a readable text table ({e})") from None
    body = iter(enumerate(text[skip:], start=skip + 1))
    if header is None:
        first = next(((n, line.split()) for n, line in body if line.strip()), None)
        if first is None:
            raise DataError(f"{path}: line {skip + 1}: expected a line of column names")
        header = ([unnamed_first] if unnamed_first else []) + first[1]
    rows, lines = [], []
    for n, line in body:
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}: line {n}: expected {len(header)} fields, got {len(fields)}")
        rows.append(fields)
        lines.append(n)
    return _from_rows(path, list(header), rows, lines)


def _from_rows(path: Path, header: list[str], rows: list[list[str]], lines: list[int]) -> Table:
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise DataError(f"{path}: column {dup!r} appears twice in the header")
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in header]
    return Table(path, dict(zip(header, columns, strict=True)), lines)


def read_parquet(path: Path) -> Table:
    require_file(path, "table")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        data = pq.read_table(path).to_pydict()
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError family for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    return Table(path, {str(k): v for k, v in data.items()}, None)


TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def read_table(path: Path) -> Table:
    """A CSV (``.csv``), TSV (``.tsv``/``.tab``) or Parquet (``.parquet``/``.pq``) file, by suffix."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return read_parquet(path)
    if suffix in TABLE_SUFFIXES:
        return read_delimited(path, TABLE_SUFFIXES[suffix])
    raise DataError(f"{path}: expected a .csv, .tsv or .parquet file, got suffix {suffix or 'none'!r}")


def resolve_paths(
    table: Table, column: str, folder: Path, *, allow_outside: bool = False
) -> np.ndarray:
    """(N,) absolute paths of a column of file names relative to ``folder``, as a numpy string array.

    Nothing is opened (a 200k-row table must build in seconds). A path that leaves ``folder`` is an
    error unless ``allow_outside``: a table should not make us read arbitrary files. Leaving is
    checked twice: lexically (``..``, an absolute path), then with symbolic links followed (a link
    inside the folder to a file outside, a path through a linked folder), at the cost of listing each
    folder once (:class:`_RealFolder`). The paths returned are the lexical ones, as the table names them.
    """
    base = os.path.abspath(folder)
    prefix = base.rstrip(os.sep) + os.sep
    posix = os.sep == "/" and os.altsep is None
    real = None if allow_outside else _RealFolder(base)
    out = []
    for i, rel in enumerate(table.strings(column)):
        # A plain relative path (no empty, '.' or '..' component, nothing leading or trailing) is
        # already normal: prefix + rel is what normpath(join(base, rel)) returns, at a fraction of
        # its cost. Anything else (including names that merely start with a dot) takes the full way.
        if posix and rel and rel[0] != "/" and rel[-1] != "/" and "//" not in rel and "/." not in "/" + rel:
            p = prefix + rel
        else:
            p = os.path.normpath(os.path.join(base, rel))
            if not allow_outside and not p.startswith(prefix):
                raise DataError(
                    f"{table.where(i, column)}: path {rel!r} leaves {base}; expected a path inside it "
                    "(set `data.allow_outside_root` to permit)"
                )
        target = real.outside(p) if real is not None else None
        if target is not None:
            raise DataError(
                f"{table.where(i, column)}: path {rel!r} leaves {base} through a symbolic link (to {target}); "
                "expected a path inside it (set `data.allow_outside_root` to permit)"
            )
        out.append(p)
    return np.asarray(out, dtype=str)


def refuse_links_out(paths: list[str], folder: Path) -> None:
    """Refuse, in one DataError naming it, a file below ``folder`` that a symbolic link (the file, or a
    folder on its way) takes outside ``folder``: the check :func:`resolve_paths` makes of a table's
    paths, for readers that list the folder instead (each folder looked at once)."""
    base = os.path.abspath(folder)
    real = _RealFolder(base)
    for p in paths:
        target = real.outside(os.path.abspath(p))
        if target is not None:
            raise DataError(f"{p}: leaves {base} through a symbolic link (to {target}); expected a file inside "
                            "it (set `data.allow_outside_root` to permit)")


class _RealFolder:
    """Whether paths, with their symbolic links followed, stay inside a folder.

    Each parent folder is looked at once (a 200k-row table names a few folders): its real path, and
    which of its entries are links (one ``scandir``, whose entries say so without a ``stat`` each). A
    path then costs a set lookup unless it is a link. A path that does not exist stays as it is
    (``realpath`` resolves what exists): the image check names missing files.
    """

    def __init__(self, base: str) -> None:
        self.root = os.path.realpath(base)
        self.prefix = self.root.rstrip(os.sep) + os.sep
        self._folders: dict[str, tuple[str, bool, frozenset[str]]] = {}

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.prefix)

    def outside(self, path: str) -> str | None:
        """The real path of ``path`` (absolute and normal) when it lies outside the folder, else None."""
        head, _, tail = path.rpartition(os.sep)
        folder = self._folders.get(head)
        if folder is None:
            real = os.path.realpath(head or os.sep)
            folder = self._folders[head] = (real, self._inside(real), _links_in(head or os.sep))
        real_head, head_inside, links = folder
        if tail in links:
            real = os.path.realpath(path)
            return None if self._inside(real) else real
        return None if head_inside else os.path.join(real_head, tail)


def _links_in(folder: str) -> frozenset[str]:
    """The names of the symbolic links in ``folder`` (none when it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            return frozenset(e.name for e in entries if e.is_symlink())
    except OSError:
        return frozenset()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, bytes, str, numbers and numpy arrays, and nothing else.

    A pickle can name any importable callable and have it run; dataset files come from elsewhere,
    so only the globals numpy needs to rebuild an array (and nothing that executes code) resolve.
    """

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            # Python 3 writes bytes in protocol 2 as encode(str, "latin1"): a pure function.
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """Read a pickle written by Python 2 or 3 (byte strings stay bytes) with the restricted unpickler."""
    require_file(path, "pickle file")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DataError(f"{path}: not a readable data pickle ({e})") from None
