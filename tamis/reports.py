"""Small HTML reports: a table, an inline PNG, a page; what the audit and validate reports share."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    ".stop{background:#f8d0d0}.warn{background:#fbeec0}"
)


def table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    """An HTML table of escaped cells; ``row_classes`` colours rows (``stop``, ``warn``)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    classes = row_classes or [""] * len(rows)
    body = "".join(
        f"<tr class=\"{c}\">" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
        for r, c in zip(rows, classes)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def figure():
    """A matplotlib ``pyplot`` on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig, dpi: int = 90) -> str:
    """The figure as base64 PNG for an ``<img src="data:image/png;base64,...">``; closes it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    figure().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
