"""The benchmark report as one self-contained HTML page and as Markdown.

Same conventions as ``bench.report.html`` (its style sheet; plots inline as PNG data URIs; no
script, no web font, no link to another host): sections of tables, each with its figures.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

from bench.report.html import CSS, figure_html
from bench.report.plots import Plot
from bench.report.render import html_table, markdown
from bench.report.tables import Table

PLOTS = "plots"


@dataclass
class Section:
    title: str
    anchor: str
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    intro: str = ""


@dataclass
class BenchmarkPage:
    title: str
    fairness: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)


def anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def render_html(page: BenchmarkPage) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(page.title)}</title><style>{CSS}</style></head><body>",
           f'<header><h1>{esc(page.title)}</h1><div class="fair" id="fairness">{esc(page.fairness)}</div>']
    if page.notes:
        out.append('<div class="banner mixed">' + "<br>".join(esc(n) for n in page.notes) + "</div>")
    out.append("</header><nav><div>" + "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in page.sections)
               + "</div></nav><main>")
    for s in page.sections:
        out.append(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>')
        if s.intro:
            out.append(f'<p class="muted">{esc(s.intro)}</p>')
        out += [html_table(t) for t in s.tables] + [figure_html(p) for p in s.plots] + ["</section>"]
    out.append("</main><footer>Written by the benchmark report from the run folders alone (no training). Tables "
               "are also in report.md and csv/; plots in plots/ as PNG and SVG.</footer></body></html>")
    return "\n".join(out) + "\n"


def render_markdown(page: BenchmarkPage) -> str:
    md = [f"# {page.title}", "", f"*{page.fairness}*", ""]
    md += [f"> {n}\n" for n in page.notes]
    for s in page.sections:
        md += [f"## {s.title}", ""] + ([s.intro, ""] if s.intro else [])
        md += [markdown(t) for t in s.tables]
        md += [f"![{p.title}]({PLOTS}/{p.png.name})\n\n*{p.caption}*\n" for p in s.plots]
    return "\n".join(md)
