"""Training batches: which slices, in which order, with which augmentation.

Randomness is derived from (seed, epoch, sample index), never from global RNG state, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from scipy import ndimage

from bench.data import synapse  # synapse.load_slice looked up per call, so a test can spy on reads
from bench.data.synapse import Dataset
from bench.protocol import Augmentation


def augment(image: np.ndarray, label: np.ndarray, aug: Augmentation, rng: np.random.Generator):
    """The official RandomGenerator: rot90 + flip with p, else a small integer-angle rotation."""
    if rng.random() < aug.rot_flip_p:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = np.flip(np.rot90(image, k), axis=axis)
        label = np.flip(np.rot90(label, k), axis=axis)
    elif rng.random() < aug.rotate_p:
        angle = int(rng.integers(-aug.rotate_degrees, aug.rotate_degrees))
        # order 0 for the image too, as the official code does
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        label = ndimage.rotate(label, angle, order=0, reshape=False)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def resize_pair(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image cubic, label nearest, to size x size (the official zoom); a colour image channel by channel."""
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        f = (size / h, size / w)
        image = (ndimage.zoom(image, f, order=3) if image.ndim == 2 else
                 np.stack([ndimage.zoom(image[..., c], f, order=3) for c in range(image.shape[2])], axis=-1))
        label = ndimage.zoom(label, f, order=0)
    return image.astype(np.float32), label


class TrainSlices(torch.utils.data.Dataset):
    """Training slices; an item is addressed by (epoch, index) so its augmentation is reproducible.

    Nothing is cached in the process: every item is read from its file, which the OS page cache
    keeps in memory once for all DataLoader workers (and for every run on the machine). A cache
    inside the dataset would be copied into each worker and grow with ``num_workers``.
    """

    def __init__(self, ds: Dataset, size: int, aug: Augmentation | None, seed: int):
        self.ds, self.size, self.aug, self.seed = ds, size, aug, seed

    def __len__(self) -> int:
        return len(self.ds.train_slices)

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return synapse.load_slice(self.ds, self.ds.train_slices[index])

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, label = self._raw(index)
        if self.aug is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, label = augment(image, label, self.aug, rng)
        image, label = resize_pair(image, label, self.size)  # the label as stored until now: see load_slice
        x = torch.from_numpy(image)[None] if image.ndim == 2 else torch.from_numpy(image.transpose(2, 0, 1).copy())
        return x, torch.from_numpy(label.astype(np.int64))


def batch_keys(n_items: int, batch_size: int, seed: int, iteration: int) -> list[tuple[int, int]]:
    """The (epoch, index) keys of one iteration's batch: a fresh seeded permutation per epoch.

    Like a shuffling DataLoader without drop_last: the last batch of an epoch may be short.
    """
    steps = -(-n_items // batch_size)
    epoch, step = divmod(iteration, steps)
    perm = np.random.default_rng([seed, epoch, 2**31]).permutation(n_items)
    return [(epoch, int(i)) for i in perm[step * batch_size : (step + 1) * batch_size]]


class IterationBatches(torch.utils.data.Sampler):
    """Yields batches of keys for iterations start..stop-1 (so resuming starts mid-epoch)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.bs, self.seed, self.start, self.stop = n_items, batch_size, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for it in range(self.start, self.stop):
            yield batch_keys(self.n, self.bs, self.seed, it)


def _worker_init(worker_id: int) -> None:
    # Items draw from their own (seed, epoch, index) generator; this only tames stray global use.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def training_loader(ds: Dataset, size: int, aug: Augmentation | None, batch_size: int, seed: int, start: int,
                    stop: int, num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The batches of iterations ``start..stop-1``, as training reads them (and the loader benchmark)."""
    data = TrainSlices(ds, size, aug, seed)
    return torch.utils.data.DataLoader(
        data, batch_sampler=IterationBatches(len(data), batch_size, seed, start, stop),
        num_workers=num_workers, worker_init_fn=_worker_init, persistent_workers=False, pin_memory=pin_memory,
    )
