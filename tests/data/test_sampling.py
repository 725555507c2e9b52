"""Training batches: bit-identical to the pipeline's definition with 0 and 2 workers, read per item,
each epoch covered once in an order that depends on (seed, iteration) only; augmentation drawn from its generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bench.data.synapse
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.sampling import TrainSlices, augment, batch_keys, resize_pair, training_loader
from bench.data.synapse import open_synapse
from bench.protocol import Augmentation

SIZE, BATCH, SEED = 48, 4, 3


def _expected(ds, aug: Augmentation, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One item as the pipeline defines it (and as the earlier, cached version made it): the slice as
    stored, augmented by the (seed, epoch, index) generator, resized; float32 image, int64 label."""
    with np.load(ds.root / "train_npz" / f"{ds.train_slices[index]}.npz") as f:
        image, label = f["image"].astype(np.float32), f["label"].astype(np.int64)
    image, label = augment(image, label, aug, np.random.default_rng([SEED, epoch, index]))
    image, label = resize_pair(image, label, SIZE)
    return torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64))


@pytest.fixture(scope="module")
def ds(tiny_dataset):
    return open_synapse(tiny_dataset, "tiny", SYNAPSE_ORGANS)


def test_batches_are_bit_identical_with_0_and_2_workers(ds):
    aug = Augmentation()  # rot90 / flip and rotations both happen
    steps = 2 * -(-len(ds.train_slices) // BATCH) + 1  # two epochs and a step into the third
    want = []
    for it in range(steps):
        items = [_expected(ds, aug, *k) for k in batch_keys(len(ds.train_slices), BATCH, SEED, it)]
        want.append((torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])))
    for workers in (0, 2):
        got = list(training_loader(ds, SIZE, aug, BATCH, SEED, 0, steps, num_workers=workers))
        assert len(got) == steps
        for (x, y), (wx, wy) in zip(got, want, strict=True):
            assert x.dtype == torch.float32 and y.dtype == torch.int64
            assert x.shape == (len(wx), 1, SIZE, SIZE)
            assert torch.equal(x, wx) and torch.equal(y, wy)
    resumed = list(training_loader(ds, SIZE, aug, BATCH, SEED, steps - 3, steps, num_workers=0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, want[-3:], strict=True))


def test_items_are_read_from_their_files_not_kept_in_the_process(ds, monkeypatch):
    reads = []
    real = bench.data.synapse.load_slice
    monkeypatch.setattr(bench.data.synapse, "load_slice", lambda d, n: reads.append(n) or real(d, n))
    data = TrainSlices(ds, SIZE, Augmentation(), SEED)
    first = data[(0, 1)]
    again = data[(0, 1)]
    assert reads == [ds.train_slices[1]] * 2  # no copy of the slice stays behind (workers would each hold one)
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1].numpy(), again[1].numpy())


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_iteration():
    n, bs = 23, 5
    epoch0 = [k for it in range(5) for k in batch_keys(n, bs, seed=3, iteration=it)]
    assert sorted(i for _, i in epoch0) == list(range(n))  # last batch of the epoch is short
    assert {e for e, _ in epoch0} == {0}
    assert batch_keys(n, bs, 3, 7) == batch_keys(n, bs, 3, 7)
    assert batch_keys(n, bs, 3, 5) != batch_keys(n, bs, 4, 5)
    assert batch_keys(n, bs, 3, 5)[0][0] == 1


def test_augmentation_is_a_function_of_its_generator():
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    lab = (img > 0.5).astype(np.int64)
    a = augment(img, lab, Augmentation(), np.random.default_rng([1, 2, 3]))
    b = augment(img, lab, Augmentation(), np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
