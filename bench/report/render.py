"""One ``Table`` in Markdown, LaTeX (booktabs, best values in bold) and HTML; CSV from its data."""
from __future__ import annotations

import html
import re

from bench.report.markdown import markdown_table
from bench.report.tables import Table

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_UNICODE_MATH = {"±": r"$\pm$", "–": "--", "…": r"\dots{}", "≥": r"$\geq$", "†": r"\dag{}", "<": r"$<$", ">": r"$>$"}


def markdown(t: Table, level: int = 3) -> str:
    lines = [f"{'#' * level} {t.title}", "", *markdown_table(t.header, t.rows, t.numeric, t.bold)]
    if t.note:
        lines += ["", f"*{t.note}*"]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(_UNICODE_MATH.get(ch, ch) for ch in out)


def latex(t: Table) -> str:
    """A booktabs ``table`` environment; needs ``\\usepackage{booktabs}``."""
    def cell(i: int, j: int, text: str) -> str:
        body = latex_escape(text)
        return rf"\textbf{{{body}}}" if (i, j) in t.bold and text != "-" else body

    spec = "".join("r" if j in t.numeric else "l" for j in range(len(t.header)))
    caption = latex_escape(t.title + (f". {t.note}" if t.note else ""))
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{caption}}}",
             rf"\label{{tab:{re.sub(r'[^A-Za-z0-9:-]', '-', t.key)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in t.header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(i, j, c) for j, c in enumerate(row)) + r" \\" for i, row in enumerate(t.rows)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def html_table(t: Table) -> str:
    """A ``<table>`` with its title and fairness note as the caption."""
    esc = html.escape

    def cell(i: int, j: int, text: str, tag: str = "td") -> str:
        body = esc(text)
        if (i, j) in t.bold and text != "-":
            body = f"<strong>{body}</strong>"
        if (i, j) in t.links:
            body = f'<a href="{esc(t.links[i, j])}">{body}</a>'
        cls = ' class="num"' if j in t.numeric else ""
        return f"<{tag}{cls}>{body}</{tag}>"

    num_cls = ' class="num"'
    head = "".join(f"<th{num_cls if j in t.numeric else ''}>{esc(h)}</th>" for j, h in enumerate(t.header))
    body = []
    for i, row in enumerate(t.rows):
        cls = t.row_class[i] if i < len(t.row_class) else ""
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(cell(i, j, c) for j, c in enumerate(row)) + "</tr>")
    if not t.rows:
        body.append(f'<tr><td colspan="{len(t.header)}">(none)</td></tr>')
    note = f'<div class="note">{esc(t.note)}</div>' if t.note else ""
    # title and note above the table rather than in <caption>, whose width is the table's
    return (f'<div class="tablebox" id="table-{esc(t.key)}"><div class="title">{esc(t.title)}</div>{note}'
            f'<div class="tablewrap"><table data-key="{esc(t.key)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div></div>")


def csv_text(t: Table) -> str:
    return t.data.to_csv(index=False) if t.data is not None else ""



def lr_effect_lines(t: Table) -> list[str]:
    """The LR table (``tables.lr_effect_table``) as one plain line per model, for the terminal at any width."""
    lines = [t.title.split("? ")[0] + "? (paired Wilcoxon over test cases, Holm-corrected)"]
    for model, lr, against, protocol_lr, cases, dsc, dsc_protocol, diff, _w, p, p_holm, verdict in t.rows:
        lines.append(f"  {model} vs {against}: lr {lr} vs {protocol_lr}; DSC {dsc} vs {dsc_protocol} %, median "
                     f"diff {diff} pp over {cases} case{'s' if cases != '1' else ''}, p {p} (Holm {p_holm}): {verdict}")
    return lines
