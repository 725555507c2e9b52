"""SIGUSR1, a scheduler's warning before preemption or the time limit: training writes a
checkpoint at the end of the iteration it arrived in and stops with ``Preempted`` (an
``Interrupted``), and the process's own USR1 handler is back afterwards."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from bench.data.organs import SYNAPSE_ORGANS
from bench.data.synapse import open_synapse
from bench.engine.train import Interrupted, Preempted, load_checkpoint, seed_everything, train
from bench.protocol import load_protocol
from models import create_model


def test_usr1_checkpoints_at_the_end_of_the_iteration_and_stops_as_preempted(tiny_dataset, tmp_path, one_thread):
    ds = open_synapse(tiny_dataset, "tiny", SYNAPSE_ORGANS)
    proto = load_protocol("smoke").derive(iterations=6, checkpoint_every=100)
    seed_everything(0)
    model = create_model("swinunet-nano", num_classes=ds.num_classes, in_channels=1, img_size=proto.input_size)
    said = []

    def warn(done: int) -> None:
        if done == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    mine = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with pytest.raises(Preempted, match="SIGUSR1 at iteration 2") as e:
            train(model, ds, proto, 0, tmp_path, 0.01, torch.device("cpu"), say=said.append, on_iteration=warn)
        assert isinstance(e.value, Interrupted)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, mine)
    # sent from iteration 2's hook: a checkpoint after iteration 2 (the protocol's interval is 100)
    assert load_checkpoint(tmp_path)["iteration"] == 2
    assert any("SIGUSR1 at iteration 2: checkpoint saved" in s for s in said)
