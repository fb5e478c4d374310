"""A report as a list of plain blocks, so that Markdown and HTML render the same content."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of text cells; every row has ``len(header)`` cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A PNG beside the report, by file name (relative to the report's folder)."""

    file: str
    alt: str


Block = Heading | Paragraph | Bullets | Table | Image
