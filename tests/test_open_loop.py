"""Why the load generator has an open loop: a server that stalls for a second.

The serving trainer is stopped (SIGSTOP) for one second in the middle of a 10-second run, once
under a closed loop and once under an open loop at about half the closed loop's throughput. A
closed loop stops sending while the server is stopped, so the stall shows as one slow request per
caller; the open loop goes on falling due, and every request due in the stall's first half waits
more than half a second, timed from when it was due.
"""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests_support import until
from twinbench.api import inference_pb2_grpc
from twinbench.config import LOADGEN_PROGRAM, installed_program
from twinbench.data.datasets import load_dataset
from twinbench.experiments.bench_serving import measure_remote, open_loop_flags
from twinbench.serving.statistics import server_statistics
from twinbench.serving.tensors import infer_request

pytestmark = pytest.mark.integration

CONCURRENCY = 4
SECONDS = 10.0
STOP_S = 1.0
SLOW_MS = 500.0


def _latencies_with_a_stall(stack, model, request, flags, bound, stall_after):
    """The counted latencies of a SECONDS run (`bound` callers, or requests in flight) against the
    torch trainer, which is stopped for STOP_S once it has answered `stall_after` requests of the
    run (warm-up included); and the load generator's line."""
    trainer = stack.procs["torch_trainer"].pid
    address = stack.address("torch_trainer")
    with (
        tempfile.TemporaryDirectory() as tmp,
        grpc.insecure_channel(stack.gateway_address) as channel,
    ):
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request_file, latency_file = Path(tmp) / "request.bin", Path(tmp) / "latencies.bin"
        request_file.write_bytes(request)
        before = server_statistics(stub, model)["requests"]
        run = subprocess.Popen(
            [str(installed_program(LOADGEN_PROGRAM)), *flags, "--latency-file", str(latency_file),
             address, str(request_file), str(bound), str(SECONDS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            until(
                lambda: server_statistics(stub, model)["requests"] - before >= stall_after,
                f"{stall_after} requests answered",
                timeout_s=30,
                poll_s=0.1,
            )
            os.kill(trainer, signal.SIGSTOP)
            try:
                # SIGSTOP lands asynchronously: the stall's second counts from a stopped process
                until(lambda: _state(trainer) == "T", "the trainer stopped", timeout_s=10)
                time.sleep(STOP_S)  # the stall itself: the stimulus, not a wait for anything
            finally:
                os.kill(trainer, signal.SIGCONT)
            out, err = run.communicate(timeout=120)
        finally:
            run.kill()  # when it is still running: a failure above
        assert run.returncode == 0, err
        return np.fromfile(latency_file, dtype="<f8"), out


def _state(pid: int) -> str:
    """A process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_stopped_server_shows_in_the_open_loop_and_hides_in_the_closed_one(stack, trained):
    if installed_program(LOADGEN_PROGRAM) is None:
        if os.environ.get("TWINBENCH_FRONT_TESTS") == "required":
            pytest.fail("the Go load generator is not built: `make native` needs Go (see README)")
        pytest.skip("the Go load generator is not built")
    job, _ = trained["torch"]
    model = next(e.model_name for e in job.exports if e.format == "onnx")
    request = infer_request(model, load_dataset("mnist-5k").test.x[:1]).SerializeToString()
    address = stack.address("torch_trainer")
    _, _, _, closed_rps, _ = measure_remote(address, request, CONCURRENCY, 1.0, None)
    rate = closed_rps / 2

    # The stop falls about 3 s into each run: after the 1 s warm-up and 2 s of counting.
    closed, _ = _latencies_with_a_stall(stack, model, request, (), CONCURRENCY, int(closed_rps * 3))
    # The open loop's bound on requests in flight is far above what a stop of 1 s piles up.
    opened, out = _latencies_with_a_stall(
        stack, model, request, open_loop_flags(rate), 4096, int(rate * 3)
    )
    slow_closed = int((closed > SLOW_MS).sum())
    slow_open = int((opened > SLOW_MS).sum())
    said = (
        f"closed loop at {CONCURRENCY} callers: {closed_rps:,.0f} requests/s, {slow_closed} of"
        f" {len(closed)} over {SLOW_MS:g} ms; open loop at {rate:,.0f}/s: {slow_open} of"
        f" {len(opened)} over {SLOW_MS:g} ms; {out.strip()}"
    )
    print(said)
    # Every request due in the stop's first half waited over half a second: rate x 0.5 of them.
    assert slow_open >= 0.9 * rate * (STOP_S - SLOW_MS / 1000), said
    # A closed loop records the stall once per caller at most.
    assert 1 <= slow_closed <= CONCURRENCY, said
