"""Paper tables: published rows from bench/experiments/published/*.yaml beside ours, recomputed from runs.

Our value for a row: per seed, the mean over cases of each organ (DSC in %), the row's DSC /
HD95 being the mean over organs; then mean and sample standard deviation over seeds.
Every table says which protocol, dataset, metric convention and seeds produced our rows, and
says plainly when they can't be compared in value with the published ones. Where a published row
says which code produced its number (``provenance``), the table carries it (a column in the CSV,
numbered footnotes in the Markdown and on the console); our row for a network whose code was never
released (``reconstructed: true``) says it is a reconstruction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from bench.engine.metrics import REF_ONLY
from bench.errors import BenchError
from bench.files import atomic_write
from bench.report.markdown import markdown_table

REFERENCE_DIR = Path(__file__).parent / "published"
RECONSTRUCTED = "reconstructed: the code behind the published number was never released; ours follows the paper"


def load_reference(table_id: str) -> dict:
    """A published table (title, dataset, columns, rows) with its source, by id."""
    known = {}
    for path in sorted(REFERENCE_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for tid, table in doc["tables"].items():
            known[tid] = {**table, "source": doc["source"], "id": tid}
    if table_id not in known:
        raise BenchError(f"unknown published table '{table_id}'; known: {', '.join(sorted(known))}")
    return known[table_id]


MISSED = "†"
MISSED_NOTE = ("† our HD95 counts missed organs as 0 (0 = missed: the synapse convention's HD95 of an organ in the "
               "reference that was not predicted); 'missed' = such organs over the test cases, mean over seeds.")


def row_values(metrics: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """{column: (mean, sd over seeds)} for dsc (%), hd95, each organ's DSC (%) (none for a single class: it is
    the dsc) and, under the synapse convention, ``missed`` (organs in the reference not predicted, per seed)."""
    per_seed = {}
    for metric, scale in (("dice", 100.0), ("hd95", 1.0)):
        df = metrics[metrics["metric"] == metric]
        organ = df.groupby(["seed", "label", "organ"])["value"].mean().reset_index()
        wide = organ.sort_values("label").pivot(index="seed", columns="organ", values="value") * scale
        wide = wide[organ.sort_values("label")["organ"].unique()]
        per_seed[metric] = wide
    table = per_seed["dice"].copy() if per_seed["dice"].shape[1] > 1 else per_seed["dice"].iloc[:, :0].copy()
    table.insert(0, "hd95", per_seed["hd95"].mean(axis=1))
    table.insert(0, "dsc", per_seed["dice"].mean(axis=1))
    if "status" in metrics and set(metrics.get("convention", pd.Series(["synapse"]))) == {"synapse"}:
        missed = metrics[(metrics["metric"] == "hd95") & (metrics["status"] == REF_ONLY)].groupby("seed").size()
        table["missed"] = missed.reindex(table.index, fill_value=0).astype(float)
    sd = table.std(ddof=1) if len(table) > 1 else table.iloc[0] * np.nan
    return {col: (float(table[col].mean()), float(sd[col])) for col in table.columns}


def comparable(reference: dict, protocol: str, dataset: str) -> bool:
    return protocol == "paper" and dataset.lower().startswith(reference["dataset"])


def caveat(reference: dict, protocol: str, protocol_hash: str, dataset: str, convention: str,
           seeds: list[int], precision: str = "fp32", subset: str = "") -> str:
    scored = f", scored on {subset} only" if subset else ""
    where = (f"Our rows: protocol `{protocol}` ({protocol_hash}, {precision}), dataset `{dataset}`{scored}, metric "
             f"convention `{convention}`, seeds {seeds}; mean ± sd over seeds.")
    if comparable(reference, protocol, dataset):
        return where
    reasons = []
    if protocol != "paper":
        reasons.append(f"a `{protocol}` protocol, not the paper's recipe")
    if not dataset.lower().startswith(reference["dataset"]):
        generated = " (a generated phantom: synthetic numbers are not comparable in value with real data)"
        reasons.append(f"`{dataset}` data{generated if dataset.startswith('synthetic') else ''}, "
                       f"not {reference['dataset']}")
    return (f"{where}\n\n**Not comparable in value with the published rows:** ours come from "
            f"{' and '.join(reasons)}. They check that the pipeline runs, not the paper's numbers.")


def published_row(reference: dict, method: str) -> dict | None:
    return next((r for r in reference["rows"] if str(r["method"]) == str(method)), None)


def _published_cells(row: dict, columns: list[str], reference: dict) -> dict[str, str]:
    cells = {"dsc": _num(row.get("dsc")), "hd95": _num(row.get("hd95"))}
    ref_cols = reference.get("columns", [])
    for col in columns:
        if col in ref_cols and row.get("values"):
            cells[col] = _num(row["values"][ref_cols.index(col)])
    return cells


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"


def _ours(v: tuple[float, float]) -> str:
    mean, sd = v
    if np.isnan(mean):
        return "-"
    return f"{mean:.2f}" if np.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def _status(row: dict) -> str:
    parts = [row.get("status", "as printed")]
    if row.get("note"):
        parts.append(row["note"])
    return "; ".join(parts)


def build_table(reference: dict, ours: dict[str, dict[str, tuple[float, float]]],
                match: dict[str, str | None], all_published: bool) -> pd.DataFrame:
    """Rows: (published rows not matched first, if ``all_published``), then per our row:
    ours, the published row it mirrors, and the difference."""
    columns = ["dsc", "hd95", *reference.get("columns", [])]
    for values in ours.values():
        columns += [c for c in values if c not in columns]
    out = []
    matched = {m for m in match.values() if m}
    if all_published:
        for r in reference["rows"]:
            if str(r["method"]) not in matched:
                out.append({"row": str(r["method"]), "source": "published", "status": _status(r),
                            **_published_cells(r, columns, reference), "provenance": r.get("provenance", "")})
    for name, values in ours.items():
        cells = {c: _ours(values[c]) for c in columns if c in values and c != "missed"}
        if "missed" in values:
            cells["missed"] = _ours(values["missed"]).replace(".00", "")
        mark = MISSED if values.get("missed", (0.0, 0.0))[0] > 0 else ""
        if mark:
            cells["hd95"] += mark
        method = match.get(name)
        pub = published_row(reference, method) if method else None
        status = RECONSTRUCTED if pub is not None and pub.get("reconstructed") else ""
        out.append({"row": name, "source": "ours", "status": status, **cells})
        if pub is None:
            continue
        out.append({"row": str(pub["method"]), "source": "published", "status": _status(pub),
                    **_published_cells(pub, columns, reference), "provenance": pub.get("provenance", "")})
        diff = {}
        for c, cell in _published_cells(pub, columns, reference).items():
            if cell != "-" and c in values and not np.isnan(values[c][0]):
                diff[c] = f"{values[c][0] - float(cell):+.2f}" + (mark if c == "hd95" else "")
        out.append({"row": "", "source": "difference", "status": "ours - published", **diff})
    frame = pd.DataFrame(out)
    order = ["row", "source", *[c for c in columns if c in frame.columns], "status", "provenance"]
    return frame.reindex(columns=order).fillna("")


def footnotes(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The table without its provenance column, each row that had one marked ``[n]``, and the notes."""
    if "provenance" not in table.columns:
        return table, []
    numbers: dict[str, int] = {}
    rows = table["row"].tolist()
    for i, text in enumerate(table["provenance"]):
        if text:
            rows[i] = f"{rows[i]} [{numbers.setdefault(str(text), len(numbers) + 1)}]"
    return table.drop(columns="provenance").assign(row=rows), [f"[{n}] {t}" for t, n in numbers.items()]


def render_markdown(table: pd.DataFrame, title: str, note: str, source: str) -> str:
    table, notes = footnotes(table)
    cols = [c.upper() if c in ("dsc", "hd95") else c for c in table.columns]
    rows = [[str(v) for v in r.tolist()] for _, r in table.iterrows()]
    lines = [f"# {title}", "", note, "", f"Published values: {source}.", "", *markdown_table(cols, rows)]
    if notes:
        lines += ["", "Where the published numbers come from:", "", *[f"- {n}" for n in notes]]
    if _marked(table):
        lines += ["", MISSED_NOTE]
    return "\n".join(lines) + "\n"


def _marked(table: pd.DataFrame) -> bool:
    return "hd95" in table and table["hd95"].astype(str).str.endswith(MISSED).any()


def write_comparison(table: pd.DataFrame, reference: dict, title: str, note: str, out: Path,
                     console: Console) -> Path:
    """``table.md`` and ``table.csv`` under ``out``, and a narrow version on the console."""
    md = render_markdown(table, title, note, reference["source"])
    atomic_write(out / "table.md", lambda p: p.write_text(md))
    atomic_write(out / "table.csv", lambda p: table.to_csv(p, index=False))
    shown = ["row", "source", "dsc", "hd95", *(["missed"] if "missed" in table else [])]  # organs: in the files
    t = Table(title=title, title_justify="left")
    for c in shown:
        t.add_column(c.upper() if c in ("dsc", "hd95") else c, justify="left" if c in ("row", "source") else "right")
    marked, notes = footnotes(table)
    for _, r in marked.iterrows():
        cells = [str(r[c]) for c in shown]
        if r["status"] == RECONSTRUCTED:
            cells[0] += " (reconstructed)"
        t.add_row(*cells, style={"published": "dim", "difference": "italic"}.get(r["source"]))
    console.print(t)
    for line in notes:
        console.print(line, highlight=False)
    console.print(Markdown(note + (f"\n\n{MISSED_NOTE}" if _marked(table) else "")))  # rendered, never raw
    console.print(f"table written to {out / 'table.md'} and table.csv", markup=False)
    return out / "table.md"
