"""The self-contained HTML page: inline styles, images as data: URIs, no external URL anywhere."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from badit.experiments.results import Table, with_spread

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f6f7f9; color: #1d2430; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.6em; margin: 12px 0 4px; }
h2 { font-size: 1.25em; margin: 0 0 8px; border-bottom: 1px solid #d8dde4; padding-bottom: 4px; }
section { background: #fff; border: 1px solid #d8dde4; border-radius: 6px; padding: 14px 18px; margin: 16px 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #d8dde4; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef1f5; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.sources { font-size: 0.8em; color: #5a6472; }
.sources code { word-break: break-all; }
.flag { background: #fff3cd; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 6px 0; }
.ok { background: #e8f5e9; border-left: 4px solid #43a047; padding: 6px 10px; margin: 6px 0; }
.note { color: #5a6472; font-size: 0.9em; }
"""


@dataclass
class Section:
    """A titled part of the page; ``sources`` are the files its numbers come from (shown under it)."""

    title: str
    blocks: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)

    def add(self, block: str) -> None:
        self.blocks.append(block)

    def source(self, *paths: Path) -> None:
        for path in paths:
            if path not in self.sources:
                self.sources.append(path)


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def number(value: float | None, std: float | None = None) -> str:
    """A table cell: 2 decimals, ``± std`` when a seed spread is given, ``-`` for missing values."""
    return with_spread(value, std)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> str:
    """An HTML table (the results model's `Table`); cells are escaped there."""
    return Table(list(header), [list(r) for r in rows]).html(caption)


def figure(uri: str, alt: str) -> str:
    if not uri.startswith("data:image/"):
        raise ValueError("figures must be embedded as data: URIs")
    return f'<img src="{uri}" alt="{esc(alt)}">'


def paragraph(text: str, kind: str = "note") -> str:
    return f'<p class="{kind}">{esc(text)}</p>'


GENERATOR = '<meta name="generator" content="badit report">'
"""In every page's head: how `write_report` knows a file it may replace (it never replaces another file)."""


def render(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page as one string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        GENERATOR,
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        *(paragraph(line) for line in intro),
    ]
    for section in sections:
        parts.append(f"<section><h2>{esc(section.title)}</h2>")
        parts += section.blocks
        if section.sources:
            files = ", ".join(f"<code>{esc(p)}</code>" for p in section.sources)
            parts.append(f'<p class="sources">Numbers from: {files}</p>')
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
