"""Training batches: which slices, in which order, with which augmentation.

Randomness is derived from (seed, epoch, sample index), never from global RNG state, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

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
    """Training slices; an item is addressed by (epoch, index) so its augmentation is reproducible."""

    def __init__(self, ds: Dataset, size: int, aug: Augmentation | None, seed: int, cache: bool = True):
        self.ds, self.size, self.aug, self.seed = ds, size, aug, seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ds.train_slices)

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            return synapse.load_slice(self.ds, self.ds.train_slices[index])
        if index not in self._cache:
            self._cache[index] = synapse.load_slice(self.ds, self.ds.train_slices[index])
        return self._cache[index]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, label = self._raw(index)
        if self.aug is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, label = augment(image, label, self.aug, rng)
        image, label = resize_pair(image, label, self.size)
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
