"""The one header line of every command that trains or scores: protocol and hash, dataset, device, LR.

``bench run``, ``ablate``, ``paper``, ``tune``, ``evaluate`` (re-scoring and ``--pred``) and ``predict``
print it before their first long step, so a log says at its top what produced the numbers below it.
"""
from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text

from bench.data.synapse import Dataset
from bench.protocol import Evaluation, Protocol


def describe_dataset(ds: Dataset, ev: Evaluation | None = None) -> str:
    """``synthetic (2211 training slices, 12 test cases)``, with the scored subset when ``ev`` declares one."""
    subset = ev.subset() if ev is not None else ""
    scored = f"; scored: {subset}" if subset else ""
    return f"{ds.name} ({len(ds.train_slices)} training slices, {len(ds.test_cases)} test cases{scored})"


def describe_lrs(lrs: Iterable[tuple[str, float, str]]) -> str:
    """``0.05 (protocol cpu)`` when every model has it, else ``unet 0.05 (...), swinunet 0.01 (...)``;
    from (model, lr, source) triples."""
    per_model = {model: (lr, source) for model, lr, source in lrs}
    pairs = set(per_model.values())
    if len(pairs) == 1:
        value, source = pairs.pop()
        return f"{value:g} ({source})"
    return ", ".join(f"{m} {value:g} ({source})" for m, (value, source) in per_model.items())


# a protocol, or (name, hash) as a run's manifest records them
ProtocolRef = Protocol | tuple[str, str]


def header(protocol: ProtocolRef | Iterable[ProtocolRef] | None, dataset: str, device: object, lr: str,
           more: str = "") -> Text:
    """The header line (plain text, names in bold): ``protocol P (hash), dataset D, device X, lr L``, then
    ``more``. ``protocol`` is None for scores of another tool's predictions (no protocol applies)."""
    line = Text("protocol ")
    if protocol is None:
        line.append("none (another tool's predictions)")
    else:
        refs = [protocol] if isinstance(protocol, Protocol | tuple) else list(protocol)
        named = dict.fromkeys(p if isinstance(p, tuple) else (p.name, p.hash()) for p in refs)  # rows may share one
        for k, (name, h) in enumerate(named):
            line.append(", " if k else "").append(name, "bold").append(f" ({h})")
    line.append(", dataset ").append(dataset, "bold").append(f", device {device}, lr {lr}")
    return line.append(f", {more}" if more else "")


def recorded_lr(manifest: dict) -> str:
    """The LR a run's manifest records, with its source (``none`` for another tool's predictions)."""
    if manifest.get("lr") is None:
        return "none (trained elsewhere)"
    return f"{float(manifest['lr']):g} ({manifest.get('lr_source') or 'source not recorded'})"
