"""Writes modelname_python.txt: requests made and parsed by Python's protobuf, the seed corpus of
the Go model-name fuzz test and what Python read from each ("<bytes hex> ok <name hex>" or
"<bytes hex> err"). Run from the repository root with the project's Python:

    .venv/bin/python services/gateway/front/testdata/make_modelname_corpus.py
"""

from pathlib import Path

from modelname_oracle import answer  # noqa: E402 - beside this file

from twinbench.api.inference_pb2 import InferParameter, ModelInferRequest

HERE = Path(__file__).resolve().parent


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def string(field: int, value: bytes) -> bytes:
    return key(field, 2) + varint(len(value)) + value


def requests() -> list[bytes]:
    made = []
    plain = ModelInferRequest(model_name="lenet5-torch-onnx", model_version="1", id="a")
    made.append(plain.SerializeToString())
    full = ModelInferRequest(model_name="mlp-tf-savedmodel", id="req-7")
    full.parameters["priority"].CopyFrom(InferParameter(int64_param=3))
    tensor = full.inputs.add(name="images", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.fp32_contents.extend([0.5, -1.0])
    full.outputs.add(name="logits")
    full.raw_input_contents.append(bytes(range(256)) * 4)
    made.append(full.SerializeToString())
    made.append(ModelInferRequest(model_name="résnet-tf-onnx").SerializeToString())  # UTF-8
    made.append(ModelInferRequest(model_name="a-b-c").SerializeToString())
    made.append(ModelInferRequest().SerializeToString())  # b"": no name
    made.append(ModelInferRequest(id="only-an-id").SerializeToString())
    # Fields out of number order, a repeated name (the last wins), unknown fields of every wire
    # type, a group, a name with the wrong wire type (an unknown field then).
    made.append(string(7, b"\x00" * 32) + string(1, b"vgg16-torch-onnx"))
    made.append(string(1, b"first-torch-onnx") + string(3, b"x") + string(1, b"last-tf-onnx"))
    made.append(key(99, 0) + varint(300) + key(98, 1) + b"\x00" * 8 + key(97, 5) + b"\x00" * 4
                + string(1, b"m-torch-onnx"))  # fmt: skip
    made.append(key(50, 3) + key(1, 0) + varint(5) + key(50, 4) + string(1, b"g-torch-onnx"))
    made.append(key(1, 0) + varint(7))
    made.append(string(1, b"m-torch-onnx") + key(1, 5) + b"\x01\x02\x03\x04")
    made.append(key(536870911, 0) + varint(1) + string(1, b"max-field-number"))
    # Where upb is lenient: a ten-byte varint with bits beyond 64, field number 0 in a group,
    # groups 100 deep (101 are refused).
    made.append(key(6, 0) + b"\xfd" * 9 + b"\x30" + string(1, b"m-torch-onnx"))
    made.append(key(50, 3) + b"\x00\x30" + key(50, 4) + string(1, b"m-tf-onnx"))
    made.append(key(50, 3) * 100 + key(50, 4) * 100 + string(1, b"deep-torch-onnx"))
    made.append(key(50, 3) * 101 + key(50, 4) * 101 + string(1, b"deep-torch-onnx"))
    # Where upb is strict and the front need not be: field numbers over 2^29 - 1, long tags.
    made.append(b"\x80\x80\x80\x80\x10\x01" + string(1, b"m-torch-onnx"))
    made.append(b"\x88\x80\x80\x80\x80\x00\x01" + string(1, b"m-torch-onnx"))
    # Broken: truncations, bad UTF-8, bad lengths, bad keys, reserved wire types, a stray end group.
    made.append(plain.SerializeToString()[:5])
    made.append(string(1, b"\xff\xfe-torch-onnx"))
    made.append(string(1, b"ok-torch-onnx") + string(1, b"\xc3"))
    made.append(string(1, b"\xed\xa0\x80"))  # a surrogate half
    made.append(b"\x0a\xff\xff\xff\xff\x0f")  # a name longer than the message
    made.append(b"\xff\xff not protobuf")
    made.append(b"\x0a\x11lenet5-torch-onnx\xff\xff")
    made.append(key(0, 0) + varint(1))  # field number 0
    made.append(key(5, 6) + b"\x00")
    made.append(key(5, 7) + b"\x00")
    made.append(key(5, 4))
    made.append(key(5, 3) + key(6, 4))  # a group ended by another number
    made.append(b"\x80" * 11)  # a varint of more than ten bytes
    made.append(string(1, b"ok-torch-onnx") + key(2, 2))
    return made


def main() -> None:
    lines = []
    for data in requests():
        lines.append(f"{data.hex() or '-'} {answer(data)}".rstrip())
    (HERE / "modelname_python.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
