"""The model repository in Triton's layout; versions appear only whole, by an atomic rename."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from twinbench.errors import InvalidArgument

# format -> (file or folder name inside a version, Triton platform, framework that writes it)
FORMATS: dict[str, tuple[str, str]] = {
    "torchscript": ("model.pt", "pytorch_libtorch"),
    "onnx": ("model.onnx", "onnxruntime_onnx"),
    "savedmodel": ("model.savedmodel", "tensorflow_savedmodel"),
    # A folder: jax.export's serialized StableHLO and its weights (twinbench.frameworks.jax).
    # Triton has no JAX backend; "jax_stablehlo" names what a custom (Python) backend would load.
    "stablehlo": ("model.stablehlo", "jax_stablehlo"),
}
FRAMEWORK_FORMATS = {
    "torch": ("torchscript", "onnx"),
    "tf": ("savedmodel", "onnx"),
    "jax": ("stablehlo", "onnx"),
}
INFO_FILE = "export.json"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


# Fault injection for tests: with TWINBENCH_FAILPOINT=before-publish, an export stops for good
# once its files are written, before it is published, so that a test's kill lands mid-export.
FAILPOINT = "TWINBENCH_FAILPOINT"


def _failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT) == name:
        threading.Event().wait()  # until the process is killed


def check_model_name(name: str) -> None:
    """Model names become paths: a strict character set, so none can leave the repository."""
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            f"{name[:80]!r} is not a model name: lower-case letters, digits, '.', '_' and '-',"
            " starting with a letter or digit"
        )


def model_name(model: str, framework: str, fmt: str) -> str:
    """The served name of an export: <model>-<framework>-<format>. The one naming rule; the Go
    front's frameworkOf (services/gateway/front/main.go) reads names by the same rule."""
    return f"{model}-{framework}-{fmt}"


def parse_model_name(name: str) -> tuple[str, str, str] | None:
    """(model, framework, format) of a served name, or None when it does not follow the rule.

    The last two '-'-separated parts are the framework and the format; the model is the rest
    (so a model name may hold '-' itself).
    """
    model, _, rest = name.rpartition("-")
    model, _, framework = model.rpartition("-")
    if not model or not framework or not rest:
        return None
    return model, framework, rest


def framework_of(name: str) -> str:
    """The framework part of a served name (the trainer that serves it), or "" when none."""
    parsed = parse_model_name(name)
    return parsed[1] if parsed else ""


@dataclass(frozen=True)
class InputSpec:
    """One input tensor of a served model, per sample (the batch dimension comes first)."""

    name: str
    datatype: str  # a V2 datatype: "FP32" for images, "INT64" for ids
    shape: tuple[int, ...]
    id_limit: int = 0  # INT64 ids must lie in [0, id_limit); 0: not ids

    @classmethod
    def from_dict(cls, raw: dict) -> InputSpec:
        return cls(raw["name"], raw["datatype"], tuple(raw["shape"]), raw.get("id_limit", 0))


@dataclass(frozen=True)
class ExportInfo:
    """What a served version is: stored beside it as export.json."""

    name: str
    version: int
    model: str
    framework: str
    format: str
    job_id: str
    input_shape: tuple[int, ...]  # one sample, C x H x W
    num_classes: int
    class_names: tuple[str, ...]
    max_batch_size: int
    sha256: str
    max_abs_diff: float
    created_at: float
    # Models with inputs other than one FP32 image (NCF, GNMT) list them here; empty: one FP32
    # input named INPUT_NAME of input_shape (every export written before these existed).
    inputs: tuple[InputSpec, ...] = ()
    output_shape: tuple[int, ...] = ()  # one sample's logits; empty: (num_classes,)

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        return self.inputs or (InputSpec(INPUT_NAME, "FP32", tuple(self.input_shape)),)

    @property
    def logits_shape(self) -> tuple[int, ...]:
        return self.output_shape or (self.num_classes,)

    @property
    def platform(self) -> str:
        return FORMATS[self.format][1]

    @property
    def filename(self) -> str:
        return FORMATS[self.format][0]

    @classmethod
    def from_json(cls, text: str) -> ExportInfo:
        raw = json.loads(text)
        raw["input_shape"] = tuple(raw["input_shape"])
        raw["class_names"] = tuple(raw["class_names"])
        raw["inputs"] = tuple(InputSpec.from_dict(i) for i in raw.get("inputs", ()))
        raw["output_shape"] = tuple(raw.get("output_shape", ()))
        return cls(**raw)


def sha256_of(path: Path) -> str:
    """Checksum of a file, or of a folder (relative paths and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def triton_config(info: ExportInfo) -> str:
    dims = lambda shape: ", ".join(str(d) for d in shape)  # noqa: E731
    inputs = ", ".join(
        f'{{ name: "{i.name}" data_type: TYPE_{i.datatype} dims: [ {dims(i.shape)} ] }}'
        for i in info.input_specs
    )
    # The ids' ranges, which the V2 metadata has no field for; ModelConfig's parameters (Triton's
    # field 14) carry them to clients that build inputs, as "<input>.id_limit".
    parameters = "".join(
        f'parameters {{ key: "{i.name}.id_limit" value {{ string_value: "{i.id_limit}" }} }}\n'
        for i in info.input_specs
        if i.id_limit
    )
    return (
        f'name: "{info.name}"\n'
        f'platform: "{info.platform}"\n'
        f"max_batch_size: {info.max_batch_size}\n"
        f"input [ {inputs} ]\n"
        f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {dims(info.logits_shape)} ] }} ]\n'
        f"{parameters}"
    )


def write_dynamic_batching(model_dir: Path, name: str, max_rows: int, delay_us: int) -> Path:
    """Records a model's tuned dynamic batching in its config.pbtxt, as Triton's Model Analyzer
    writes its best setting: `preferred_batch_size` the most requests the gateway merges for it,
    `max_queue_delay_microseconds` how long a batch waits. The rest of the file is kept; with no
    file yet (the model not exported here yet), one holding only its name and the batching, which
    its first export then completes (`Staging.publish` keeps the batching)."""
    from google.protobuf import text_format

    from twinbench.api import inference_pb2 as ipb

    path = model_dir / "config.pbtxt"
    if path.is_file():
        config = text_format.Parse(path.read_text(), ipb.ModelConfig())
    else:
        config = ipb.ModelConfig(name=name)
    config.dynamic_batching.preferred_batch_size[:] = [max_rows]
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, text_format.MessageToString(config))
    return path


def read_dynamic_batching(model_dir: Path) -> tuple[int, int] | None:
    """A model's tuned dynamic batching from its config.pbtxt: (the most requests merged, the
    queue delay in microseconds); None when it has none."""
    from google.protobuf import text_format

    from twinbench.api import inference_pb2 as ipb

    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return None
    try:
        config = text_format.Parse(path.read_text(), ipb.ModelConfig())
    except text_format.ParseError:  # a broken file holds no setting to keep; publish rewrites it
        return None
    if not config.HasField("dynamic_batching") or not config.dynamic_batching.preferred_batch_size:
        return None
    batching = config.dynamic_batching
    return max(batching.preferred_batch_size), int(batching.max_queue_delay_microseconds)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    tmp.replace(path)


class Staging:
    """A hidden folder where one export is written and checked before it is published."""

    def __init__(self, repository: ModelRepository, name: str, fmt: str) -> None:
        self.repository = repository
        self.name = name
        self.format = fmt
        self.dir = repository.root / name / f".staging-{uuid.uuid4().hex}"
        self.dir.mkdir(parents=True)

    @property
    def model_path(self) -> Path:
        return self.dir / FORMATS[self.format][0]

    def publish(self, **fields) -> ExportInfo:
        """Writes export.json and renames the folder into the next free version number."""
        _failpoint("before-publish")
        model_dir = self.repository.root / self.name
        sha = sha256_of(self.model_path)
        while True:
            version = max(self.repository.versions(self.name), default=0) + 1
            info = ExportInfo(
                name=self.name,
                version=version,
                format=self.format,
                sha256=sha,
                created_at=time.time(),
                **fields,
            )
            (self.dir / INFO_FILE).write_text(json.dumps(asdict(info), indent=2))
            try:
                # rename(2) onto a missing path is atomic: readers see no version or a whole one.
                os.rename(self.dir, model_dir / str(version))
                break
            except OSError:
                if not (model_dir / str(version)).exists():
                    raise
        # A new version keeps the model's tuned batching: it is the model's, not one version's.
        tuned = read_dynamic_batching(model_dir)
        batching = (f"dynamic_batching {{ preferred_batch_size: {tuned[0]}"
                    f" max_queue_delay_microseconds: {tuned[1]} }}\n") if tuned else ""  # fmt: skip
        _write_atomically(model_dir / "config.pbtxt", triton_config(info) + batching)
        return info

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def stage(self, name: str, fmt: str) -> Iterator[Staging]:
        staging = Staging(self, name, fmt)
        try:
            yield staging
        finally:
            staging.discard()  # a no-op once published

    def remove_staging(self, framework: str) -> list[Path]:
        """Deletes what a killed export of `framework` left half-written; never listed or served."""
        removed = []
        for staging in self.root.glob(f"*-{framework}-*/.staging-*"):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
        return removed

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        model_dir = self.root / name
        if not NAME_PATTERN.match(name) or not model_dir.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.name.isdigit() and (p / INFO_FILE).is_file()
        )

    def info(self, name: str, version: int) -> ExportInfo:
        return ExportInfo.from_json((self.version_dir(name, version) / INFO_FILE).read_text())

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)
