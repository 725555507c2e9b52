"""Paper tables: published rows from bench/experiments/published/*.yaml beside ours, recomputed from runs.

Our value for a row: per seed, the mean over cases of each organ (DSC in %), the row's DSC /
HD95 being the mean over organs; then mean and sample standard deviation over seeds.
Every table says which protocol, dataset, metric convention and seeds produced our rows, and
says plainly when they can't be compared in value with the published ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from bench.errors import BenchError
from bench.files import atomic_write
from bench.report.markdown import markdown_table

REFERENCE_DIR = Path(__file__).parent / "published"


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


def row_values(metrics: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """{column: (mean, sd over seeds)} for dsc (%), hd95 and each organ's DSC (%)."""
    per_seed = {}
    for metric, scale in (("dice", 100.0), ("hd95", 1.0)):
        df = metrics[metrics["metric"] == metric]
        organ = df.groupby(["seed", "label", "organ"])["value"].mean().reset_index()
        wide = organ.sort_values("label").pivot(index="seed", columns="organ", values="value") * scale
        wide = wide[organ.sort_values("label")["organ"].unique()]
        per_seed[metric] = wide
    table = per_seed["dice"].copy()
    table.insert(0, "hd95", per_seed["hd95"].mean(axis=1))
    table.insert(0, "dsc", per_seed["dice"].mean(axis=1))
    sd = table.std(ddof=1) if len(table) > 1 else table.iloc[0] * np.nan
    return {col: (float(table[col].mean()), float(sd[col])) for col in table.columns}


def comparable(reference: dict, protocol: str, dataset: str) -> bool:
    return protocol == "paper" and dataset.lower().startswith(reference["dataset"])


def caveat(reference: dict, protocol: str, protocol_hash: str, dataset: str, convention: str,
           seeds: list[int], precision: str = "fp32") -> str:
    where = (f"Our rows: protocol `{protocol}` ({protocol_hash}, {precision}), dataset `{dataset}`, metric "
             f"convention `{convention}`, seeds {seeds}; mean ± sd over seeds.")
    if comparable(reference, protocol, dataset):
        return where
    reasons = []
    if protocol != "paper":
        reasons.append(f"a `{protocol}` protocol, not the paper's recipe")
    if not dataset.lower().startswith(reference["dataset"]):
        reasons.append(f"`{dataset}` data, not {reference['dataset']}")
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
                            **_published_cells(r, columns, reference)})
    for name, values in ours.items():
        cells = {c: _ours(values[c]) for c in columns if c in values}
        out.append({"row": name, "source": "ours", "status": "", **cells})
        pub = published_row(reference, match.get(name)) if match.get(name) else None
        if pub is None:
            continue
        out.append({"row": str(pub["method"]), "source": "published", "status": _status(pub),
                    **_published_cells(pub, columns, reference)})
        diff = {}
        for c, cell in _published_cells(pub, columns, reference).items():
            if cell != "-" and c in values and not np.isnan(values[c][0]):
                diff[c] = f"{values[c][0] - float(cell):+.2f}"
        out.append({"row": "", "source": "difference", "status": "ours - published", **diff})
    frame = pd.DataFrame(out)
    order = ["row", "source", *[c for c in columns if c in frame.columns], "status"]
    return frame.reindex(columns=order).fillna("")


def render_markdown(table: pd.DataFrame, title: str, note: str, source: str) -> str:
    cols = [c.upper() if c in ("dsc", "hd95") else c for c in table.columns]
    rows = [[str(v) for v in r.tolist()] for _, r in table.iterrows()]
    lines = [f"# {title}", "", note, "", f"Published values: {source}.", "", *markdown_table(cols, rows)]
    return "\n".join(lines) + "\n"


def write_comparison(table: pd.DataFrame, reference: dict, title: str, note: str, out: Path,
                     console: Console) -> Path:
    """``table.md`` and ``table.csv`` under ``out``, and a narrow version on the console."""
    md = render_markdown(table, title, note, reference["source"])
    atomic_write(out / "table.md", lambda p: p.write_text(md))
    atomic_write(out / "table.csv", lambda p: table.to_csv(p, index=False))
    shown = ["row", "source", "dsc", "hd95"]  # the organs are in the files; a terminal is narrow
    t = Table(title=title, title_justify="left")
    for c in shown:
        t.add_column(c.upper() if c in ("dsc", "hd95") else c, justify="left" if c in ("row", "source") else "right")
    for _, r in table.iterrows():
        t.add_row(*[str(r[c]) for c in shown], style={"published": "dim", "difference": "italic"}.get(r["source"]))
    console.print(t)
    console.print(note)
    console.print(f"table written to {out / 'table.md'} and table.csv")
    return out / "table.md"
