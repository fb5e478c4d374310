"""Render a report's blocks as Markdown (images linked) or as one self-contained HTML page.

The HTML page embeds every image as a base64 ``data:image/png`` URI and carries its CSS inline, so it
loads nothing from anywhere: it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from groupdistil.report.document import Block, Bullets, Heading, Image, Paragraph, Table

#: A cell that holds a number, "mean ± std", an interval "[low, high]" or "n/a".
NUMERIC = re.compile(r"^(n/a|\[?-?\d[\d.]*(, -?\d[\d.]*\])?( ± \d[\d.]*)?)$")
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: .8em 0; }
""".strip()


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The report as GitHub-flavoured Markdown; images link to the PNG files beside it."""
    out = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"{'#' * (block.level + 1)} {block.text}", ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out += [_md_row(block.header), _md_row(["---"] * len(block.header))]
            out += [_md_row(row) for row in block.rows] + [""]
        elif isinstance(block, Image):
            out += [f"![{block.alt}]({block.file})", ""]
    return "\n".join(out)


def to_html(title: str, blocks: Sequence[Block], image_dir: Path) -> str:
    """The report as one HTML page; each Image block's PNG is read from ``image_dir`` and embedded."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            level = block.level + 1
            body.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{html.escape(item)}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            head = _html_row("th", block.header)
            rows = "".join(_html_row("td", row) for row in block.rows)
            table = f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"
            body.append(f'<div class="scroll">{table}</div>')
        elif isinstance(block, Image):
            data = base64.b64encode((image_dir / block.file).read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _html_row(tag: str, cells: Sequence[str]) -> str:
    parts = []
    for cell in cells:
        # Numbers, intervals and "n/a" align right so that columns of numbers line up.
        opening = '<td class="num">' if tag == "td" and NUMERIC.match(cell) else f"<{tag}>"
        parts.append(f"{opening}{html.escape(cell)}</{tag}>")
    return "<tr>" + "".join(parts) + "</tr>"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
