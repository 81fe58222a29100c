"""The Python load generator of `twinbench bench serving`, for where the Go one is not built.

`python -m twinbench.experiments.loadgen ADDRESS REQUEST_FILE CONCURRENCY SECONDS` takes the arguments of
`loadtests/loadgen` and prints the same JSON line: it sends the serialized ModelInferRequest in
REQUEST_FILE over and over from CONCURRENCY callers and prints requests, p50_ms, p99_ms, rps, and
the share of one CPU it used (near 1.0 means the figures are the client's limit, not the
server's). It uses asyncio on one thread, the cheapest client gRPC Python has, and still costs
about 0.1 ms of CPU a call: against the gateway's front it is often the limit.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
import numpy as np

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
WARM_UP_S = 1.0


async def run(address: str, request: bytes, concurrency: int, seconds: float) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: nothing to serialize
        latencies: list[float] = []
        counting = False
        stop = False

        async def caller() -> None:
            while not stop:
                start = time.perf_counter()
                await infer(request, timeout=30)
                if counting:
                    latencies.append(time.perf_counter() - start)

        callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(WARM_UP_S)
        counting = True
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        counting = False
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stop = True
        await asyncio.gather(*callers)
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(ms) / elapsed,
        "client_cpu": cpu / elapsed,
    }


def main() -> None:
    address, request_file, concurrency, seconds = sys.argv[1:5]
    with open(request_file, "rb") as f:
        request = f.read()
    print(json.dumps(asyncio.run(run(address, request, int(concurrency), float(seconds)))))


if __name__ == "__main__":
    main()
