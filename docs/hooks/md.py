"""Markdown helpers shared by the reference generators (`docs/hooks/`)."""

from __future__ import annotations

import re

_CODE = re.compile(r"(`[^`]*`)")


def cell(text) -> str:
    """One table cell: `|` and HTML-like `<name>` escaped outside code spans, newlines folded."""
    parts = _CODE.split(" ".join(str(text).split()))
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span: Markdown escapes it itself, and a table does not split cells inside it
            out.append(part)
        else:
            out.append(part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
                       .replace("*", "\\*").replace("_", "\\_"))
    return "".join(out)


def code(value) -> str:
    """`value` as a code span (Python repr for strings, so '' shows as an empty string)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return "`" + text.replace("`", "'") + "`"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
