"""The V2 tensor codec: raw and typed contents, and the errors a client can act on."""

import numpy as np
import pytest

from twinbench.api import inference_pb2 as ipb
from twinbench.serving.tensors import (
    TensorError,
    add_output,
    decode_inputs,
    infer_request,
    output_array,
)


def test_raw_round_trip_is_a_view_of_the_request_bytes():
    batch = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    request = infer_request("m", batch)
    decoded = decode_inputs(request)["input"]
    assert decoded.shape == (3, 1, 28, 28) and np.array_equal(decoded, batch)
    assert not decoded.flags.owndata  # no copy of the payload


def test_typed_contents_decode():
    request = ipb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    assert decode_inputs(request)["input"].tolist() == [[1.5, -2.0]]


def test_output_round_trip():
    response = ipb.ModelInferResponse()
    logits = np.arange(20, dtype=np.float32).reshape(2, 10)
    add_output(response, "logits", logits)
    assert response.outputs[0].datatype == "FP32" and list(response.outputs[0].shape) == [2, 10]
    assert np.array_equal(output_array(response, "logits"), logits)


def _request(datatype="FP32", shape=(1, 4), raw=b"\0" * 16, contents=None, inputs=1):
    request = ipb.ModelInferRequest(model_name="m")
    for _ in range(inputs):
        t = request.inputs.add(name="input", datatype=datatype, shape=shape)
        if contents is not None:
            t.contents.fp32_contents.extend(contents)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    "request_, message",
    [
        (_request(raw=b"\0" * 15), "15 bytes of raw content"),
        (_request(datatype="FLOAT"), "unknown datatype"),
        (_request(shape=(1, -4)), "negative dimension"),
        (_request(raw=None, contents=[1.0]), "1 values"),
        (_request(contents=[1.0, 2.0, 3.0, 4.0]), "not both"),
        (_request(inputs=0, raw=None), "no inputs"),
        (_request(inputs=2), "one per input"),
    ],
)
def test_malformed_tensors_are_refused_with_a_reason(request_, message):
    with pytest.raises(TensorError, match=message):
        decode_inputs(request_)
