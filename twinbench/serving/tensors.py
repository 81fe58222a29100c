"""KServe V2 tensors <-> numpy arrays. Imports only numpy and the stubs, so Locust can use it."""

from __future__ import annotations

import numpy as np

from twinbench.api import inference_pb2 as ipb

# V2 datatype -> (numpy dtype, InferTensorContents field for typed contents)
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "UINT8": (np.dtype(np.uint8), "uint_contents"),
    "UINT16": (np.dtype(np.uint16), "uint_contents"),
    "UINT32": (np.dtype(np.uint32), "uint_contents"),
    "UINT64": (np.dtype(np.uint64), "uint64_contents"),
    "INT8": (np.dtype(np.int8), "int_contents"),
    "INT16": (np.dtype(np.int16), "int_contents"),
    "INT32": (np.dtype(np.int32), "int_contents"),
    "INT64": (np.dtype(np.int64), "int64_contents"),
    "FP16": (np.dtype(np.float16), None),  # raw only, as the spec says
    "FP32": (np.dtype(np.float32), "fp32_contents"),
    "FP64": (np.dtype(np.float64), "fp64_contents"),
}


class TensorError(ValueError):
    """A request's tensor does not match what it claims or what the model takes."""


def _elements(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def decode_input(tensor: ipb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """The tensor as an array, checked against its own shape and datatype (a view over `raw`)."""
    if tensor.datatype not in DATATYPES:
        raise TensorError(
            f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}; "
            f"V2 datatypes are {', '.join(DATATYPES)}"
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"input {tensor.name!r}: negative dimension in shape {list(shape)}")
    dtype, field = DATATYPES[tensor.datatype]
    count = _elements(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise TensorError(
                f"input {tensor.name!r}: send raw_input_contents or typed contents, not both"
            )
        if len(raw) != count * dtype.itemsize:
            raise TensorError(
                f"input {tensor.name!r}: {len(raw)} bytes of raw content, but shape {list(shape)} "
                f"of {tensor.datatype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    values = getattr(tensor.contents, field) if field else ()
    if len(values) != count:
        raise TensorError(
            f"input {tensor.name!r}: {len(values)} values in contents.{field or '(raw only)'}, "
            f"but shape {list(shape)} needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_inputs(request: ipb.ModelInferRequest) -> dict[str, np.ndarray]:
    if not request.inputs:
        raise TensorError("the request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input"
        )
    return {t.name: decode_input(t, raw[i] if raw else None) for i, t in enumerate(request.inputs)}


def datatype_of(array: np.ndarray) -> str:
    for name, (dtype, _) in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise TensorError(f"no V2 datatype for {array.dtype}")


def add_output(response: ipb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """Appends an output as raw bytes, the form clients read fastest."""
    array = np.ascontiguousarray(array)
    response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
    response.raw_output_contents.append(array.tobytes())


def infer_request(
    model: str,
    batch: np.ndarray | dict[str, np.ndarray],
    input_name: str = "input",
    version: str = "",
) -> ipb.ModelInferRequest:
    """A request carrying `batch` (one array, or arrays by input name) as raw bytes, as V2
    clients send it for speed."""
    inputs = batch if isinstance(batch, dict) else {input_name: batch}
    request = ipb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        request.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def output_array(response: ipb.ModelInferResponse, name: str) -> np.ndarray:
    for i, out in enumerate(response.outputs):
        if out.name == name:
            dtype = DATATYPES[out.datatype][0]
            if response.raw_output_contents:
                data = np.frombuffer(response.raw_output_contents[i], dtype=dtype)
            else:
                field = DATATYPES[out.datatype][1]
                if field is None:
                    raise TensorError(f"output {name!r}: {out.datatype} comes only as raw contents")
                data = np.asarray(getattr(out.contents, field), dtype=dtype)
            return data.reshape(tuple(out.shape))
    raise KeyError(name)
