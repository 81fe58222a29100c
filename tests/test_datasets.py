"""One split for every job, and one batch order per (seed, epoch) for both frameworks."""

import numpy as np

from twinbench.datasets import epoch_order, load_dataset, split_arrays


def test_embedded_split_is_disjoint_complete_and_fixed():
    data = load_dataset("mnist-5k")
    assert (len(data.train), len(data.val), len(data.test)) == (3500, 500, 1000)
    assert data.train.x.shape[1:] == (1, 28, 28) and data.train.x.dtype == np.float32
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0
    rows = np.concatenate([s.x.reshape(len(s), -1) for s in (data.train, data.val, data.test)])
    # The 5,000 images are distinct, so no image may appear in two splits.
    assert len(np.unique(rows, axis=0)) == 5000
    # Every class is in the test set, roughly balanced.
    counts = np.bincount(data.test.y, minlength=10)
    assert counts.min() > 60 and counts.sum() == 1000


def test_split_is_a_partition_and_repeatable():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    y = np.arange(100)
    a = split_arrays(x, y, val_fraction=0.1, test_fraction=0.2, seed=1)
    b = split_arrays(x, y, val_fraction=0.1, test_fraction=0.2, seed=1)
    ids = np.concatenate([s.y for s in a])
    assert sorted(ids.tolist()) == list(range(100))
    assert [len(s) for s in a] == [70, 10, 20]
    assert all(np.array_equal(s.y, t.y) for s, t in zip(a, b, strict=True))


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert np.array_equal(epoch_order(50, 3, 1), epoch_order(50, 3, 1))
    assert not np.array_equal(epoch_order(50, 3, 1), epoch_order(50, 3, 2))
    assert not np.array_equal(epoch_order(50, 3, 1), epoch_order(50, 4, 1))
    assert sorted(epoch_order(50, 3, 1).tolist()) == list(range(50))
