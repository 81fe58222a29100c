"""The Python load generator of `twinbench bench serving`, for where the Go one is not built.

`python -m twinbench.experiments.loadgen [--rate R [--arrivals poisson|constant] [--seed N]]
[--warm-up S] [--latency-file F] ADDRESS REQUEST_FILE CONCURRENCY SECONDS` takes the arguments of
`loadtests/loadgen` and prints the same JSON line: requests, p50_ms, p99_ms, rps, completed (every
call that finished, warm-up included) and the share of one CPU it used (near 1.0 means the figures
are the client's limit, not the server's). Without `--rate`, CONCURRENCY callers each send the
next request when the last is answered (a closed loop); with it, requests fall due at R per second
and are timed from when they were due, CONCURRENCY bounding those in flight (an open loop; the
Go one's file openloop.go says why), and it adds rate, due, sent, late, over_bound and failures
(failed calls, counted; only when none succeeded does the first one's error end it). It uses
asyncio on one thread, the cheapest client gRPC Python has, and still costs about 0.1 ms of CPU a
call: against the gateway's front it is often the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import grpc
import numpy as np

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
WARM_UP_S = 1.0
CONNECT_S = 30.0
LATE_S = 0.001  # sent more than this after it fell due: counted as late (as the Go one does)


async def _connected(channel: grpc.aio.Channel) -> None:
    """Waits until the channel is up (or has failed: the first call then says why), so that no
    window starts before it: a channel connects lazily, and the first call would carry it."""
    deadline = time.monotonic() + CONNECT_S
    state = channel.get_state(try_to_connect=True)
    ends = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    while state not in ends:
        try:
            await asyncio.wait_for(
                channel.wait_for_state_change(state), deadline - time.monotonic()
            )
        except TimeoutError:
            return  # as the Go one does: the first call, with its own timeout, says why
        state = channel.get_state()


def _figures(latencies: list[float], seconds: float, completed: int, cpu: float, wall: float):
    ms = np.asarray(latencies) * 1000
    out: dict[str, float] = {
        "requests": len(ms),
        "completed": completed,
        "rps": len(ms) / seconds,
        "client_cpu": cpu / wall,
    }
    if len(ms):
        out["p50_ms"] = float(np.percentile(ms, 50))
        out["p99_ms"] = float(np.percentile(ms, 99))
    return out, ms


async def closed_loop(
    address: str, request: bytes, concurrency: int, seconds: float, warm: float = WARM_UP_S
) -> tuple[dict, np.ndarray]:
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: nothing to serialize
        await _connected(channel)
        latencies: list[float] = []
        counting = False
        stop = False
        completed = 0

        async def caller() -> None:
            nonlocal completed
            while not stop:
                start = time.perf_counter()
                await infer(request, timeout=30)
                completed += 1
                if counting:
                    latencies.append(time.perf_counter() - start)

        callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warm)
        counting = True
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        counting = False
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stop = True
        await asyncio.gather(*callers)
    return _figures(latencies, elapsed, completed, cpu, elapsed)


async def open_loop(
    address: str,
    request: bytes,
    bound: int,
    seconds: float,
    rate: float,
    arrivals: str = "poisson",
    seed: int = 1,
    warm: float = WARM_UP_S,
) -> tuple[dict, np.ndarray]:
    gaps = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER_METHOD)
        await _connected(channel)
        latencies: list[float] = []
        counts = {"due": 0, "sent": 0, "late": 0, "over_bound": 0, "failures": 0}
        in_flight = completed = 0
        calls: set[asyncio.Task] = set()

        failed: list[grpc.aio.AioRpcError] = []

        async def call(due: float, counted: bool) -> None:
            nonlocal in_flight, completed
            try:
                await infer(request, timeout=30)
            except grpc.aio.AioRpcError as exc:  # counted: past capacity a server may refuse
                failed.append(exc)
                counts["failures"] += counted
                return
            finally:
                in_flight -= 1
            completed += 1
            if counted:
                latencies.append(time.perf_counter() - due)

        cpu, start = time.process_time(), time.perf_counter()
        measured, end, offset, arrived = start + warm, start + warm + seconds, 0.0, 0
        while True:
            arrived += 1  # constant: n / rate, so that no rounding adds up over a run
            offset = arrived / rate if arrivals == "constant" else offset + gaps.expovariate(rate)
            due = start + offset
            if due >= end:
                break
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            for task in [t for t in calls if t.done()]:
                calls.discard(task)
            counted = due >= measured
            counts["due"] += counted
            if in_flight >= bound:
                counts["over_bound"] += counted
                continue
            counts["sent"] += counted
            counts["late"] += counted and time.perf_counter() - due > LATE_S
            in_flight += 1
            calls.add(asyncio.create_task(call(due, counted)))
        await asyncio.gather(*calls)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if failed and not completed:  # none answered: the request or the address is wrong
        raise failed[0]
    figures, ms = _figures(latencies, seconds, completed, cpu, wall)
    return {**figures, "rate": rate, **counts}, ms


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m twinbench.experiments.loadgen")
    parser.add_argument("-rate", "--rate", type=float, default=0.0)
    parser.add_argument(
        "-arrivals", "--arrivals", choices=("poisson", "constant"), default="poisson"
    )
    parser.add_argument("-seed", "--seed", type=int, default=1)
    parser.add_argument("-warm-up", "--warm-up", type=float, default=WARM_UP_S)
    parser.add_argument("-latency-file", "--latency-file", default="")
    parser.add_argument("address")
    parser.add_argument("request_file")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    args = parser.parse_args(sys.argv[1:])
    with open(args.request_file, "rb") as f:
        request = f.read()
    if args.rate > 0:
        figures, ms = asyncio.run(
            open_loop(args.address, request, args.concurrency, args.seconds, args.rate,
                      args.arrivals, args.seed, args.warm_up)
        )  # fmt: skip
    else:
        figures, ms = asyncio.run(
            closed_loop(args.address, request, args.concurrency, args.seconds, args.warm_up)
        )
    if args.latency_file:
        ms.astype("<f8").tofile(args.latency_file)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
