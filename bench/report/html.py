"""The report as one self-contained HTML page.

Everything is inline: the style sheet, the plots (PNG as data URIs), the manifests. No script,
no web font, no link to another host: the file opens the same on an offline machine. Fonts are
the system's own. The page is laid out for a laptop screen (about 1366 px wide): the headline
table and the heatmap come first, the rest is one click away in the navigation bar.
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field

from bench.report.plots import Plot
from bench.report.render import html_table
from bench.report.tables import Table, manifest_anchor

CSS = """
:root { color-scheme: light; --fg: #1d2127; --muted: #5b6470; --line: #d8dde3; --bad: #b3261e; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans",
       Arial, sans-serif; color: var(--fg); background: #fff; }
header, main { max-width: 1280px; margin: 0 auto; padding: 0 20px; }
header h1 { font-size: 22px; margin: 16px 0 6px; }
.fair { background: #f3f6f9; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; font-size: 13.5px; }
.fair b { font-weight: 600; }
.banner { border-radius: 6px; padding: 8px 12px; margin: 8px 0; font-size: 14px; }
.banner.mixed { background: #fff4d6; border: 1px solid #e0b000; }
.banner.failed { background: #fdecea; border: 1px solid var(--bad); color: #5f1410; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); z-index: 2; }
nav div { max-width: 1280px; margin: 0 auto; padding: 6px 20px; display: flex; gap: 18px; flex-wrap: wrap; }
nav a { color: var(--accent); text-decoration: none; font-weight: 500; }
section { padding-top: 6px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 3px; margin: 22px 0 10px; }
.tablebox { margin: 12px 0 20px; }
.tablebox .title { font-weight: 600; }
.tablewrap { overflow-x: auto; margin-top: 5px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
.note, .muted { color: var(--muted); font-size: 12.5px; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); white-space: nowrap; text-align: left; }
th { background: #eef2f6; font-weight: 600; }
td.num, th.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafbfc; }
tr.bad td { background: #fdecea; color: #5f1410; }
td:last-child { white-space: normal; }
figure { margin: 12px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; }
.overview img { max-width: min(100%, 900px); }
details { border: 1px solid var(--line); border-radius: 5px; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 500; }
pre { font-size: 12px; overflow-x: auto; background: #f6f8fa; padding: 8px; border-radius: 4px; }
footer { max-width: 1280px; margin: 30px auto; padding: 0 20px; color: var(--muted); font-size: 12.5px; }
"""


@dataclass
class Page:
    title: str
    fairness: str
    overview: list[Table]
    sections: dict[str, list[Table]]  # section title -> tables
    plots: list[Plot]
    manifests: list[tuple[str, int, str, dict | None]]  # arm, seed, status, manifest
    mixed_message: str = ""
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # skipped plots and the like


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def figure_html(plot: Plot) -> str:
    """A plot as an inline figure (PNG data URI) with its caption."""
    data = base64.b64encode(plot.png.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{html.escape(plot.key)}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(plot.title)}"><figcaption>{html.escape(plot.caption)} '
            f"(also {html.escape(plot.png.stem)}.png / .svg in plots/)</figcaption></figure>")


def render_page(page: Page) -> str:
    esc = html.escape
    overview_plot = [p for p in page.plots if p.key == "heatmap_dice"]
    other_plots = [p for p in page.plots if p.key != "heatmap_dice"]
    nav = [("overview", "Overview"), *[(_slug(s), s) for s in page.sections], ("plots", "Plots"),
           ("manifests", "Run manifests")]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(page.title)}</title><style>{CSS}</style></head><body>",
           f'<header><h1>{esc(page.title)}</h1><div class="fair" id="fairness">{esc(page.fairness)}</div>']
    if page.mixed_message:
        out.append(f'<div class="banner mixed"><b>Mixed runs.</b> {esc(page.mixed_message)}</div>')
    if page.failures:
        items = "".join(f"<li>{esc(f)}</li>" for f in page.failures)
        out.append(f'<div class="banner failed" id="failed-runs"><b>{len(page.failures)} run(s) did not complete'
                   f'</b> and are not in the numbers (see <a href="#runs">Runs</a>):<ul>{items}</ul></div>')
    out.append("</header>")
    out.append("<nav><div>" + "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in nav) + "</div></nav><main>")
    out.append('<section id="overview" class="overview"><h2>Overview</h2>')
    out += [html_table(t) for t in page.overview] + [figure_html(p) for p in overview_plot] + ["</section>"]
    for title, tables in page.sections.items():
        out.append(f'<section id="{_slug(title)}"><h2>{esc(title)}</h2>')
        out += [html_table(t) for t in tables] + ["</section>"]
    out.append('<section id="plots"><h2>Plots</h2>')
    out += [figure_html(p) for p in other_plots]
    out += [f'<p class="muted">{esc(n)}</p>' for n in page.notes] + ["</section>"]
    out.append('<section id="manifests"><h2>Run manifests</h2><p class="muted">The manifest.json of every run, '
               "as it wrote it: configuration, protocol, versions, device, timings, errors.</p>")
    for arm, seed, status, manifest in page.manifests:
        body = esc(json.dumps(manifest, indent=2, sort_keys=True, default=str)) if manifest else "(unreadable)"
        out.append(f'<details id="{manifest_anchor(arm, seed)}"><summary>{esc(arm)} seed {seed}: {esc(status)}'
                   f"</summary><pre>{body}</pre></details>")
    out.append("</section></main>")
    out.append("<footer>Written by <code>bench report</code> from the run folders alone (no training). Tables "
               "are also in report.md, tables.tex (booktabs) and csv/; plots in plots/ as PNG and SVG.</footer>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
