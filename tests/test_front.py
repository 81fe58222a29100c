"""The gateway's front: it holds the public port, lives and dies with the gateway, and without it
the gateway serves the same API by itself."""

import os
import signal
import subprocess
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import BATCHED
from tally import TALLY
from tests_support import front_pid, in_process_logits, until
from twinbench.api import inference_pb2 as ipb
from twinbench.config import FRONT_PROGRAM, installed_program
from twinbench.data.datasets import load_dataset
from twinbench.serving.tensors import infer_request, output_array


@pytest.fixture(scope="module")
def front_built():
    if installed_program(FRONT_PROGRAM) is None:
        if os.environ.get("TWINBENCH_FRONT_TESTS") == "required":
            pytest.fail("the gateway front is not built: `make native` needs Go (see README)")
        pytest.skip("the gateway front is not built (`make native`)")


def listeners(pid: int) -> list[str]:
    """The local addresses `pid` listens on (TCP)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]
    return [a.replace("[::ffff:", "").replace("]", "") for a in found]  # IPv4 on an IPv6 socket


def served(client, model: str, images: np.ndarray, version: str = "") -> np.ndarray:
    # wait_for_ready: the client's channel may still be reconnecting to a restarted gateway
    reply = client.inference.ModelInfer(
        infer_request(model, images, version=version), timeout=30, wait_for_ready=True
    )
    return output_array(reply, "logits")


def wait_gone(pid: int, timeout_s: float = 10) -> None:
    """Until `pid` has exited (gone, or a zombie its new parent has yet to reap)."""
    until(lambda: _state(pid) == "Z", f"process {pid} to exit", timeout_s)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"  # gone counts as exited


def test_the_front_holds_the_public_port_and_the_gateway_only_loopback(stack, front_built):
    front = front_pid(stack)
    assert front is not None
    public = f"127.0.0.1:{stack.ports['gateway']}"
    own = listeners(front)
    assert public in own
    # Besides: its metrics, on loopback, for the gateway to scrape.
    (metrics,) = set(own) - {public}
    assert metrics.startswith("127.0.0.1:")
    behind = listeners(stack.procs["gateway"].pid)
    assert behind and all(a.startswith("127.0.0.1:") for a in behind), behind
    assert f"127.0.0.1:{stack.ports['gateway']}" not in behind


def test_a_killed_gateway_takes_its_front_along_and_comes_back_on_its_port(
    stack, client, trained, front_built
):
    image = load_dataset("mnist-5k").test.x[:1]
    before = served(client, "lenet5-torch-onnx", image)
    front, port = front_pid(stack), stack.ports["gateway"]
    stack.kill("gateway")  # SIGKILL: the gateway cannot stop its front itself
    TALLY["faults injected"] += 1
    wait_gone(front)  # it noticed and left, freeing the port
    stack.start_service("gateway")
    assert stack.ports["gateway"] == port and front_pid(stack) not in (None, front)
    np.testing.assert_array_equal(served(client, "lenet5-torch-onnx", image), before)
    TALLY["faults survived"] += 1


def test_a_front_that_dies_takes_the_gateway_down_to_be_restarted(stack, client, front_built):
    os.kill(front_pid(stack), signal.SIGKILL)
    TALLY["faults injected"] += 1
    gateway = stack.procs["gateway"]
    assert gateway.wait(timeout=30) == 1  # a failure an orchestrator restarts, not a clean stop
    stack.start_service("gateway")
    request = ipb.ServerReadyRequest()
    assert client.inference.ServerReady(request, timeout=30, wait_for_ready=True).ready
    TALLY["faults survived"] += 1


def test_without_the_front_the_gateway_serves_the_same_api(stack, client, trained, home):
    stack.extra_env["TWINBENCH_GATEWAY_FRONT"] = "off"
    stack.restart("gateway")
    try:
        assert front_pid(stack) is None
        # its public port, and its metrics
        assert sorted(listeners(stack.procs["gateway"].pid)) == sorted(
            f"127.0.0.1:{port}" for port in (stack.ports["gateway"], stack.metrics_ports["gateway"])
        )
        images = load_dataset("mnist-5k").test.x[:40]
        model = BATCHED.split(",")[0]
        export = next(e for e in trained["torch"][0].exports if e.model_name == model)
        barrier = threading.Barrier(16)

        def ask(i: int) -> np.ndarray:  # distinct requests at once: the Python batcher merges them
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            return served(client, model, images[i : i + 2], export.version)

        with futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(0, 32, 2)))
        expected = in_process_logits(home, export, images)
        for i, answer in zip(range(0, 32, 2), answers, strict=True):
            np.testing.assert_allclose(answer, expected[i : i + 2], atol=1e-4)
        with pytest.raises(grpc.RpcError) as err:
            served(client, "nosuch-torch-onnx", images[:1])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        del stack.extra_env["TWINBENCH_GATEWAY_FRONT"]
        stack.restart("gateway")


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"\xff\xff not protobuf", "INVALID_ARGUMENT"),  # not even a field key: relayed
        (b"\n\x11lenet5-torch-onnx\xff\xff", "INVALID_ARGUMENT"),  # routed; the trainer refuses it
        (b"\n\xff\xff\xff\xff\x0f", "INVALID_ARGUMENT"),  # a name longer than the message
        (b"\n\x05a-b-c", "NOT_FOUND"),  # a framework nobody serves
        (b"", "INVALID_ARGUMENT"),  # no model named
    ],
)
def test_malformed_requests_are_refused_and_the_gateway_serves_on(
    stack, client, trained, raw, code
):
    TALLY["bad inputs tried"] += 1
    infer = client.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes as-is
    with pytest.raises(grpc.RpcError) as err:
        infer(raw, timeout=10)
    assert err.value.code().name == code, err.value.details()
    assert "Traceback" not in err.value.details()
    assert served(client, "lenet5-torch-onnx", load_dataset("mnist-5k").test.x[:1]).shape == (1, 10)
