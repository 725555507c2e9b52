"""``bench paper NAME``: a published table regenerated with our rows beside it.

Our rows are ordinary runs (completed ones are reused); an ablation table is an ablation spec
run through ``bench.experiments.ablation``.
"""
from __future__ import annotations

from typing import Any

from bench.engine.train import Interrupted
from bench.errors import BenchError
from bench.experiments import references
from bench.experiments.ablation import AblationSpec, Row, open_dataset, run_ablation, run_rows
from bench.experiments.execute import Submitted, say_failures, stopped
from bench.experiments.options import RunOptions

# Paper tables: which published table, and how our rows are made: by default one run of the model
# each published row names as `ours:` (every row whose network we have), or an ablation spec.
PAPERS: dict[str, dict[str, Any]] = {
    "swin-unet-synapse": {"table": "swin-unet-synapse"},
    "swin-unet-acdc": {"table": "swin-unet-acdc"},
    "transunet-synapse": {"table": "transunet-synapse"},
    "swin-unet-skips": {"table": "swin-unet-skips",
                        "spec": AblationSpec(base="swinunet", knob="skip_connections", values=[0, 1, 2, 3],
                                             mirrors="swin-unet-skips")},
}


def paper_table(name: str, opts: RunOptions, models: list[str] | None = None) -> int:
    """Our rows for the published table ``name`` (plus ``models``); returns the exit status."""
    if name not in PAPERS:
        raise BenchError(f"unknown paper table '{name}'; known: {', '.join(sorted(PAPERS))}")
    entry = PAPERS[name]
    if "spec" in entry:
        return run_ablation(entry["spec"], name, opts)
    reference = references.load_reference(entry["table"])
    proto = opts.load_protocol()
    ours_models = [str(r["ours"]) for r in reference["rows"] if r.get("ours")]
    rows = [Row(m, m, {}, proto) for m in dict.fromkeys(ours_models + (models or []))]
    seeds = list(opts.seeds) or list(proto.seeds)
    ds = open_dataset(opts.dataset or "synthetic", opts)
    organs = set(ds.organs.values())
    if reference.get("columns") and not organs & set(reference["columns"]):
        raise BenchError(f"{name} compares {', '.join(reference['columns'])}; dataset '{ds.name}' has "
                         f"{', '.join(sorted(organs))} (prepare the right data first, e.g. `bench data prepare-acdc`)")
    try:
        per_row, failed = run_rows(rows, seeds, ds, opts)
    except Submitted:
        return 0
    except Interrupted as e:
        return stopped(e, opts.say)
    ours = {r: references.row_values(m) for r, m in per_row.items()}
    match = {m: next((str(r["method"]) for r in reference["rows"] if r.get("ours") == m), None) for m in ours}
    table = references.build_table(reference, ours, match, all_published=True)
    note = references.caveat(reference, proto.name, proto.hash(), ds.name, proto.evaluation.convention, seeds,
                             proto.precision, proto.evaluation.subset())
    out = opts.reports / ds.name / proto.name / "papers" / name
    references.write_comparison(table, reference, f"{reference['title']}: published and ours", note, out,
                                opts.out)
    return say_failures(failed, opts.say)
