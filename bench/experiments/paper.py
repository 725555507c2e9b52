"""``bench ablate SPEC`` and ``bench paper NAME``: runs through the normal machinery, then a
published-beside-ours table under the reports folder."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.data.resolve import resolve_dataset
from bench.engine.results import atomic_write, read_metrics
from bench.engine.runner import run_jobs
from bench.env import pick_device
from bench.errors import BenchError
from bench.experiments import references as paper
from bench.experiments.ablation import AblationSpec, Row, expand, jobs, load_spec
from bench.experiments.sweep import _check_writable
from bench.protocol import load_protocol

# Paper tables: which published table, and how our rows are made.
PAPERS = {
    "swin-unet-synapse": {"table": "swin-unet-synapse", "models": ["unet", "transunet", "swinunet"]},
    "swin-unet-acdc": {"table": "swin-unet-acdc", "models": ["unet", "transunet", "swinunet"]},
    "swin-unet-skips": {"table": "swin-unet-skips",
                        "spec": AblationSpec(base="swinunet", knob="skip_connections", values=[0, 1, 2, 3],
                                             mirrors="swin-unet-skips")},
}


def _dataset(dataset: str, results: Path, console: Console, data_root: Path | None = None):
    _check_writable(results)
    return resolve_dataset(dataset, say=console.print, data_root=data_root)


def _execute(rows: list[Row], seeds: list[int], ds, results: Path, device: str, force: bool, progress: Progress,
             keep_weights: bool = True):
    outcomes = run_jobs(jobs(rows, seeds), ds, results, pick_device(device), force, progress, keep_weights)
    per_row, failed = {}, []
    for row in rows:
        mine = [o for o in outcomes if o.run.model == _label(row) and o.run.protocol == row.protocol.name]
        ok = [o.path for o in mine if o.status in ("complete", "skipped")]
        failed += [o for o in mine if o.status not in ("complete", "skipped")]
        if ok:
            m = read_metrics(ok)
            per_row[row.name] = m[m["convention"] == row.protocol.evaluation.convention]
    return per_row, failed


def _label(row: Row) -> str:
    from bench.engine.runner import RunSpec

    return RunSpec(row.model, 0, 0.0, "", knobs=dict(row.knobs)).label


def _write(table, reference, title, note, out: Path, console: Console) -> Path:
    md = paper.render_markdown(table, title, note, reference["source"])
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


def _finish(failed, console: Console) -> int:
    for o in failed:
        console.print(f"[red]{o.status}[/]: {o.run.model} seed {o.run.seed}: {o.message}")
    return 1 if failed else 0


def ablate(spec_path: Path, protocol: str | None, seeds: list[int] | None, dataset: str | None,
           results: Path, out: Path | None, device: str, force: bool, iterations: int | None,
           progress: Progress, console: Console, keep_weights: bool = True) -> int:
    spec = load_spec(spec_path)
    return _ablation(spec, Path(spec_path).stem, protocol, seeds, dataset, results, out, device, force,
                     iterations, progress, console, keep_weights)


def _ablation(spec: AblationSpec, name: str, protocol, seeds, dataset, results, out, device, force,
              iterations, progress, console, keep_weights: bool = True) -> int:
    rows = expand(spec, protocol, iterations)
    seeds = seeds or spec.seeds or list(rows[0].protocol.seeds)
    ds = _dataset(dataset or spec.dataset, results, console)
    per_row, failed = _execute(rows, seeds, ds, results, device, force, progress, keep_weights)
    reference = paper.load_reference(spec.mirrors) if spec.mirrors else {"rows": [], "source": "none", "dataset": "-"}
    ours = {r: paper.row_values(m) for r, m in per_row.items()}
    table = paper.build_table(reference, ours, {r: r for r in ours}, all_published=False)
    base = rows[0].protocol
    proto_name = base.name.split("@")[0]
    note = paper.caveat(reference, proto_name, base.hash(), ds.name, base.evaluation.convention, seeds)
    title = f"Ablation {name}: {spec.knob or 'variant'} ({spec.base})"
    _write(table, reference, title, note, (out or Path("reports")) / ds.name / proto_name / "ablations" / name, console)
    return _finish(failed, console)


def paper_table(name: str, protocol: str | None, seeds: list[int] | None, dataset: str, models: list[str],
                results: Path, out: Path | None, device: str, force: bool, iterations: int | None,
                progress: Progress, console: Console, data_root: Path | None = None,
                keep_weights: bool = True) -> int:
    if name not in PAPERS:
        raise BenchError(f"unknown paper table '{name}'; known: {', '.join(sorted(PAPERS))}")
    entry = PAPERS[name]
    if "spec" in entry:
        return _ablation(entry["spec"], name, protocol, seeds, dataset, results, out, device, force,
                         iterations, progress, console, keep_weights)
    reference = paper.load_reference(entry["table"])
    proto = load_protocol(protocol or "cpu").override(iterations=iterations)
    rows = [Row(m, m, {}, proto) for m in dict.fromkeys(entry["models"] + models)]
    seeds = seeds or list(proto.seeds)
    ds = _dataset(dataset, results, console, data_root)
    organs = set(ds.organs.values())
    if reference.get("columns") and not organs & set(reference["columns"]):
        raise BenchError(f"{name} compares {', '.join(reference['columns'])}; dataset '{ds.name}' has "
                         f"{', '.join(sorted(organs))} (prepare the right data first, e.g. `bench data prepare-acdc`)")
    per_row, failed = _execute(rows, seeds, ds, results, device, force, progress, keep_weights)
    ours = {r: paper.row_values(m) for r, m in per_row.items()}
    match = {m: next((str(r["method"]) for r in reference["rows"] if r.get("ours") == m), None) for m in ours}
    table = paper.build_table(reference, ours, match, all_published=True)
    note = paper.caveat(reference, proto.name, proto.hash(), ds.name, proto.evaluation.convention, seeds)
    _write(table, reference, f"{reference['title']}: published and ours", note,
           (out or Path("reports")) / ds.name / proto.name / "papers" / name, console)
    return _finish(failed, console)
