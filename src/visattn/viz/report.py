"""A self-contained HTML report: metric tables and PNG figures in one directory.

``report.html`` uses only inline CSS and relative links to PNG files next to it (no script, no
network), so the directory can be zipped, mailed or served as it is. All text is HTML-escaped.

Tests: ``tests/viz/test_viz_report.py`` (structure) and ``tests/viz/test_viz_browser.py``
(opened in headless Chromium: every image loads, no console error).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._io import atomic_write

__all__ = ["Figure", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; line-height: 1.45; }
header { background: #1d2b4a; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 1.6em; }
header p { margin: 0; opacity: 0.85; }
main { padding: 12px 32px 40px 32px; max-width: 1250px; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 12px 20px;
          margin: 18px 0; }
h2 { font-size: 1.2em; margin: 6px 0 10px 0; }
table { border-collapse: collapse; font-size: 0.92em; margin: 6px 0; }
th, td { border: 1px solid #d3d8e0; padding: 4px 10px; text-align: left; }
th { background: #eef1f6; }
td { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: 600; }
figure { margin: 8px 0 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e5ea; }
figcaption { font-size: 0.9em; color: #4a5263; margin-top: 4px; }
nav a { margin-right: 14px; color: #1d4f9a; }
footer { font-size: 0.85em; color: #667; padding: 0 32px 24px 32px; }
"""


@dataclass(frozen=True)
class Figure:
    """A PNG file of the report directory with a heading and a caption for the reader."""

    file: str
    title: str
    caption: str = ""


def _cell(v: object) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "–" if v is None else str(v)


def _numeric(v: object) -> bool:
    """Numbers and number-like strings ("91.2%", "1,024") are right-aligned."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    return isinstance(v, str) and bool(v) and all(ch in "0123456789.,%+-–× " for ch in v)


def _table(rows: Sequence[Mapping[str, object]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(
        f'<th class="num">{html.escape(c)}</th>'
        if rows and all(_numeric(r.get(c)) for r in rows)
        else f"<th>{html.escape(c)}</th>"
        for c in cols
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(_cell(r.get(c)))}</td>'
            if _numeric(r.get(c))
            else f"<td>{html.escape(_cell(r.get(c)))}</td>"
            for c in cols
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    out_dir: str | os.PathLike,
    *,
    title: str,
    intro: str = "",
    tables: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
    figures: Sequence[Figure] = (),
    notes: Sequence[str] = (),
    filename: str = "report.html",
) -> Path:
    """Write ``out_dir/filename`` and return its path.

    Args:
        out_dir: the report directory; every figure file must already be inside it.
        title: page title and heading; ``intro`` a paragraph under it.
        tables: heading -> rows (dicts column -> value; columns in first-seen order).
        figures: :class:`Figure` entries, shown in order, each in its own section.
        notes: short paragraphs for the footer (settings, software versions...).

    Raises:
        ValueError: a figure is missing, or its path is not a plain file name inside ``out_dir``.
    """
    out = Path(out_dir)
    if not isinstance(title, str) or not title:
        raise ValueError(f"title: expected a non-empty string, got {title!r}")
    for f in figures:
        if not isinstance(f, Figure):
            raise TypeError(f"figures: expected Figure entries, got {type(f).__name__}")
        rel = Path(f.file)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"figures: expected a path relative to {out}, got {f.file!r}")
        if not (out / rel).is_file():
            raise ValueError(f"figures: expected an existing file {out / rel}, it is missing")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(intro)}</p></header><main>" if intro else "</header><main>",
    ]
    links = [(f"t{i}", name) for i, name in enumerate(tables or {})]
    links += [(f"f{i}", f.title) for i, f in enumerate(figures)]
    if len(links) > 1:
        parts.append(
            "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in links) + "</nav>"
        )
    for i, (name, rows) in enumerate((tables or {}).items()):
        parts.append(f'<section id="t{i}"><h2>{html.escape(name)}</h2>{_table(rows)}</section>')
    for i, f in enumerate(figures):
        src = html.escape(Path(f.file).as_posix(), quote=True)
        parts.append(
            f'<section id="f{i}"><h2>{html.escape(f.title)}</h2><figure>'
            f'<img src="{src}" alt="{html.escape(f.title, quote=True)}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure></section>"
        )
    parts.append("</main>")
    if notes:
        parts.append("<footer>" + "".join(f"<p>{html.escape(n)}</p>" for n in notes) + "</footer>")
    parts.append("</body></html>\n")
    text = "\n".join(parts)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    path = atomic_write(out / filename, write, ".html")
    return path
