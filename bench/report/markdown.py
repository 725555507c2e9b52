"""Markdown tables: the one renderer behind every .md table the harness writes."""
from __future__ import annotations

from collections.abc import Collection


def markdown_table(header: list[str], rows: list[list[str]], numeric: Collection[int] = (),
                   bold: Collection[tuple[int, int]] = ()) -> list[str]:
    """The lines of a Markdown table: right-aligned ``numeric`` columns, ``bold`` (row, column) cells."""
    def cell(i: int, j: int, text: str) -> str:
        text = str(text).replace("|", "\\|")
        return f"**{text}**" if (i, j) in bold and text != "-" else text

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if j in numeric else "---" for j in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(i, j, c) for j, c in enumerate(row)) + " |" for i, row in enumerate(rows)]
    if not rows:
        lines.append("| " + " | ".join(["(none)"] + [""] * (len(header) - 1)) + " |")
    return lines
