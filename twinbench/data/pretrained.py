"""Pretrained weights for fine-tuning: torchvision's state_dict files, read without PyTorch.

Both trainers start a fine-tuning job from one file: torchvision's own weights (a `torch.save`
of a state_dict) for the PyTorch model, and the very same arrays converted by the parity
check's mapping (twinbench/models/initial_weights.py) for Keras. The TensorFlow trainer has no PyTorch, so the
file is read here with the standard library: a state_dict is a pickle of tensors whose bytes
lie beside it, in a zip archive (PyTorch 1.6 and later) or, in older files such as
torchvision's VGG16, one after the other in the legacy stream format.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.models.initial_weights import Weights, shared_initial_weights
from twinbench.models.layers import Conv, Pool, weight_shapes
from twinbench.models.spec import ModelSpec, Pretrained

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightsFileError(InvalidArgument):
    """The weights file is missing, unreadable or does not fit the model."""


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset].copy()
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(view)


class _StateDictUnpickler(pickle.Unpickler):
    """Rebuilds tensors as numpy arrays and refuses every other class: a weights file is data,
    and unpickling must not run code from it."""

    def __init__(self, file, load_storage) -> None:
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"a state_dict holds no {module}.{name}")

    def persistent_load(self, pid):
        # ("storage", storage type, key, location, numel[, view metadata (legacy)])
        _, storage_type, key, _location, numel = pid[:5]
        return self._load_storage(str(key), np.dtype(_DTYPES[storage_type]), int(numel))


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A torch.save'd state_dict's tensors by key, as numpy arrays."""
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        return _read_legacy(path.read_bytes())
    except (OSError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError,
            EOFError, struct.error) as exc:  # fmt: skip
        raise WeightsFileError(f"{path}: not a readable PyTorch state_dict ({exc})") from None


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        (pkl,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        root = pkl[: -len("data.pkl")]

        def storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            return np.frombuffer(archive.read(f"{root}data/{key}"), dtype)[:numel]

        return dict(_StateDictUnpickler(io.BytesIO(archive.read(pkl)), storage).load())


def _read_legacy(data: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(data)
    if pickle.load(f) != _LEGACY_MAGIC:
        raise ValueError("no PyTorch magic number")
    pickle.load(f)  # protocol version
    pickle.load(f)  # system information
    pending: dict[str, tuple[np.dtype, list]] = {}

    def storage(key: str, dtype: np.dtype, numel: int) -> list:
        # The bytes come after the pickle: hand out a placeholder filled in below.
        holder = pending.setdefault(key, (dtype, []))[1]
        return holder

    tensors = []

    def rebuild(holder, offset, size, stride, *_ignored):
        tensors.append((holder, offset, size, stride))
        return len(tensors) - 1

    class Legacy(_StateDictUnpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            return super().find_class(module, name)

    state = Legacy(f, storage).load()
    keys = pickle.load(f)
    arrays: dict[int, np.ndarray] = {}
    for key in keys:
        dtype, holder = pending[key]
        (numel,) = struct.unpack("<q", f.read(8))
        holder.append(np.frombuffer(f.read(numel * dtype.itemsize), dtype))
    for i, (holder, offset, size, stride) in enumerate(tensors):
        arrays[i] = _rebuild_tensor(holder[0], offset, size, stride)
    return {name: arrays[index] for name, index in state.items()}


def torchvision_keys(spec: ModelSpec) -> list[tuple[str, str]]:
    """(weight key, bias key) of each frozen layer, as torchvision's VGG names them: the
    convolutional base is `features`, an nn.Sequential where each convolution is followed by
    its ReLU and pooling layers take an index of their own."""
    pretrained = spec.pretrained
    assert pretrained is not None
    keys: list[tuple[str, str]] = []
    index = 0
    for layer in spec.layers:
        if len(keys) == pretrained.frozen_layers:
            break
        if isinstance(layer, Conv):
            keys.append(
                (f"{pretrained.prefix}.{index}.weight", f"{pretrained.prefix}.{index}.bias")
            )
            index += 2 if layer.activation else 1
        elif isinstance(layer, Pool):
            index += 1
        else:
            raise ValueError(f"{spec.name}: the frozen base has a {type(layer).__name__}")
    return keys


def base_weights(spec: ModelSpec, path: Path) -> Weights:
    """The frozen layers' arrays from the file, in twinbench's canonical (PyTorch's) layout."""
    pretrained = spec.pretrained
    assert pretrained is not None  # only fine-tuning specs have a base
    if not path.is_file():
        raise WeightsFileError(
            f"{spec.name} fine-tunes from {path}, which is missing: run `twinbench data download"
            f" {pretrained.download}`, or set pretrained_weights to a torchvision state_dict"
            " under the data folder"
        )
    state = read_state_dict(path)
    out: Weights = []
    weighted = spec.weighted()[: pretrained.frozen_layers]
    for (weight_key, bias_key), (layer, shape) in zip(
        torchvision_keys(spec), weighted, strict=True
    ):
        expected = weight_shapes(layer, shape)
        arrays = []
        for key, dims in zip((weight_key, bias_key), expected, strict=True):
            if key not in state:
                raise WeightsFileError(f"{path.name} has no {key}: not a VGG state_dict")
            if tuple(state[key].shape) != tuple(dims):
                raise WeightsFileError(
                    f"{path.name}: {key} is {tuple(state[key].shape)}, {spec.name} needs"
                    f" {tuple(dims)} (a file made for another width?)"
                )
            arrays.append(state[key].astype(np.float32))
        out.append(tuple(arrays))
    return out


def initial_weights(spec: ModelSpec, seed: int, path: Path) -> Weights:
    """Every layer's starting weights: the pretrained base, then the shared init of the top."""
    base = base_weights(spec, path)
    return base + shared_initial_weights(spec, seed)[len(base) :]


def weights_path(spec: ModelSpec, data_root: Path, override: str = "") -> Path:
    """Where a fine-tuning job's weights file is: the spec's path under the data folder, or the
    file `twinbench data download` fetches."""
    pretrained = spec.pretrained
    assert pretrained is not None
    if override:
        relative = Path(override)
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidArgument(
                f"pretrained_weights {override!r} must be relative to the data folder, without '..'"
            )
        return data_root / relative
    return data_root / pretrained.download / pretrained.filename


def make_random_weights_file(spec: ModelSpec, path: Path, seed: int = 0) -> Path:
    """A stand-in for the pretrained file where it is absent (tests, parity offline): random
    weights saved as torchvision saves them (torch.save of a state_dict, torchvision's key
    names), at the spec's width. Needs PyTorch, as making the real file did."""
    import torch

    pretrained = spec.pretrained
    assert pretrained is not None  # only fine-tuning specs have a base
    rng = np.random.default_rng([seed, 0x7615])
    state = collections.OrderedDict()
    weighted = spec.weighted()[: pretrained.frozen_layers]
    for (weight_key, bias_key), (layer, shape) in zip(
        torchvision_keys(spec), weighted, strict=True
    ):
        kernel, bias = weight_shapes(layer, shape)
        fan_in = int(np.prod(kernel[1:]))
        state[weight_key] = torch.from_numpy(
            rng.normal(0, np.sqrt(2.0 / fan_in), kernel).astype(np.float32)
        )
        state[bias_key] = torch.from_numpy(rng.normal(0, 0.01, bias).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def pretrained_base(spec: tpb.JobSpec, model: ModelSpec) -> Weights:
    """A fine-tuning job's base weights, from the file its spec names (under the data folder)."""
    from twinbench.config import load_settings

    return base_weights(model, weights_path(model, load_settings().data, spec.pretrained_weights))


def normalized(data, pretrained: Pretrained):
    """The dataset with torchvision's input preprocessing (per-channel ImageNet mean and std)
    applied once, in shared code: both frameworks train and evaluate on the same arrays, and the
    exports take inputs normalised this way, as torchvision's pretrained models do."""
    from dataclasses import replace

    from twinbench.data.datasets import Split

    mean = np.asarray(pretrained.mean, np.float32)[:, None, None]
    std = np.asarray(pretrained.std, np.float32)[:, None, None]
    scale = lambda split: Split((split.x - mean) / std, split.y)  # noqa: E731
    return replace(data, train=scale(data.train), val=scale(data.val), test=scale(data.test))


def record_fine_tuning(ctx, session, spec: tpb.JobSpec, model: ModelSpec) -> None:
    """What stayed frozen, and proof that it did: the base's largest change in training."""
    from twinbench.config import load_settings
    from twinbench.data.download import sha256_file

    data_root = load_settings().data
    path = weights_path(model, data_root, spec.pretrained_weights)
    base = base_weights(model, path)
    change = session.base_max_change(base)
    frozen = sum(a.size for arrays in base for a in arrays)
    sha = sha256_file(path)

    def record(j: tpb.Job) -> None:
        j.fine_tuning.weights_path = str(path.relative_to(data_root))
        j.fine_tuning.weights_sha256 = sha
        j.fine_tuning.frozen_parameters = frozen
        j.fine_tuning.frozen_max_change = change

    ctx.update(record)
