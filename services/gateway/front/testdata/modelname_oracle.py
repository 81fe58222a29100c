"""Python's protobuf reading model_name from bytes, for the Go model-name fuzz test.

Reads records from stdin (u32 big-endian length, then the bytes) and answers each with one line:
"ok <name in hex>" when ModelInferRequest parses, "err" when it does not. Run from the
repository root (the test sets PYTHONPATH to it).
"""

import struct
import sys

from google.protobuf.message import DecodeError

from twinbench.api.inference_pb2 import ModelInferRequest


def answer(data: bytes) -> str:
    request = ModelInferRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return "err"
    return "ok " + request.model_name.encode().hex()


def main() -> None:
    source, sink = sys.stdin.buffer, sys.stdout
    while head := source.read(4):
        (length,) = struct.unpack(">I", head)
        sink.write(answer(source.read(length)) + "\n")
        sink.flush()


if __name__ == "__main__":
    main()
