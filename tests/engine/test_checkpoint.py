"""Checkpoints: every random stream saved and restored, tensors-only files, planted pickles refused,
unreadable files told apart from errors, leftovers of killed writers removed, exact resume in process."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data.organs import SYNAPSE_ORGANS
from bench.data.synapse import open_synapse
from bench.engine import checkpoint as ck
from bench.engine.train import train
from bench.protocol import load_protocol
from models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random(), random.gauss(0, 1)


def test_every_global_random_stream_is_restored_from_a_weights_only_file(tmp_path: Path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(), random.gauss(0, 1)  # leave a cached Gaussian in both, the trickiest part of their state
    rng = ck.capture_rng(torch.device("cpu"))
    ck.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "iteration": 5, "rng": rng})
    want = _draws()
    _draws()
    state = ck.load_checkpoint(tmp_path)  # torch.load(weights_only=True) inside
    ck.restore_rng(state, torch.device("cpu"))
    assert _draws() == want


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("form", ["torch.save", "bare pickle", "old protocol 0 pickle"])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path: Path, form):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.pt"
    planted = {"model": {}, "optimizer": {}, "iteration": 1, "x": _Planted(marker)}
    if form == "torch.save":
        torch.save(planted, path)
    else:
        path.write_bytes(pickle.dumps(planted, protocol=0 if "0" in form else 4))
    with pytest.raises(ck.UnsafeCheckpoint) as e:
        ck.load_checkpoint(tmp_path, say=pytest.fail)
    assert str(e.value).startswith(f"{path}: refused to load") and "\n" not in str(e.value)
    with pytest.raises(ck.UnsafeCheckpoint):
        ck.check_run_folder(tmp_path)
    assert not marker.exists()


def test_without_the_static_scan_weights_only_loading_still_refuses(tmp_path: Path, monkeypatch):
    """torch < 2.5 has no get_unsafe_globals_in_checkpoint: torch.load(weights_only=True) is the barrier."""
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    marker = tmp_path / "marker"
    torch.save({"model": {}, "optimizer": {}, "iteration": 1, "x": _Planted(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ck.UnsafeCheckpoint, match="refused to load"):
        ck.load_checkpoint(tmp_path, say=pytest.fail)
    assert not marker.exists()


@pytest.mark.parametrize("damage, why", [
    ("truncated", "not a whole checkpoint archive"),
    ("empty", "not a whole checkpoint archive"),
    ("garbage", "not a whole checkpoint archive"),
    ("not a dict", "holds a list, not a checkpoint"),
    ("other keys", "not a checkpoint (no iteration, optimizer)"),
])
def test_unreadable_files_are_skipped_with_a_line_and_the_previous_one_is_used(tmp_path: Path, damage, why):
    ck.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "iteration": 3})
    ck.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "iteration": 6})
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not a checkpoint at all")
    elif damage == "not a dict":
        torch.save([1, 2], path)
    else:
        torch.save({"model": {}}, path)
    lines = []
    state = ck.load_checkpoint(tmp_path, say=lines.append)
    assert state["iteration"] == 3  # the previous checkpoint, not a fresh start
    assert len(lines) == 1 and f"{path} is unreadable ({why}" in lines[0]


@pytest.mark.parametrize("error", [MemoryError, RuntimeError])
def test_other_errors_while_reading_propagate(tmp_path: Path, monkeypatch, error):
    ck.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "iteration": 3})

    def fail(*a, **k):
        raise error("out of something")

    monkeypatch.setattr(ck.torch, "load", fail)
    with pytest.raises(error):
        ck.load_checkpoint(tmp_path, say=pytest.fail)


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path):
    (tmp_path / "predictions").mkdir()
    stale = [tmp_path / ".checkpoint.pt.ab12.tmp", tmp_path / "predictions" / ".case0001.npz.x.tmp"]
    kept = [tmp_path / "checkpoint.pt", tmp_path / "notes.tmp", tmp_path / "predictions" / "case0001.npz"]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert sorted(ck.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_training_resumed_from_a_checkpoint_equals_training_through(tiny_dataset, tmp_path: Path):
    """In process, with drop-path: stopped after iteration 4 (checkpoint at 3), trained again to 6."""
    ds = open_synapse(tiny_dataset, "tiny", SYNAPSE_ORGANS)
    proto = load_protocol("smoke").derive(iterations=6, checkpoint_every=3, input_size=32)

    def run(folder: Path, stop_at: int | None = None) -> dict:
        torch.manual_seed(0)
        model = create_model("swinunet-nano", num_classes=9, img_size=32)
        assert any(getattr(m, "drop_prob", 0) > 0 for m in model.modules())  # it has random layers

        def stop(done: int) -> None:
            if done == stop_at:
                raise KeyboardInterrupt

        try:
            train(model, ds, proto, 0, folder, 0.05, torch.device("cpu"), say=lambda *a: None, on_iteration=stop)
        except KeyboardInterrupt:
            return {}
        return model.state_dict()

    through = run(tmp_path / "a")
    assert run(tmp_path / "b", stop_at=4) == {}
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 3
    resumed = run(tmp_path / "b")
    assert all(torch.equal(through[k], resumed[k]) for k in through)
