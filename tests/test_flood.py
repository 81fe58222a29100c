"""HTTP/2 abuse against the gateway's front: raw clients open and reset streams as fast as they can
(rapid reset, CVE-2023-44487) while a well-behaved client keeps calling; the front serves it, and
once the flood stops its memory and goroutines come back."""

import multiprocessing
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests_support import front_pid, until
from twinbench.api import inference_pb2 as ipb
from twinbench.config import FRONT_PROGRAM, installed_program
from twinbench.data.datasets import load_dataset
from twinbench.serving.tensors import infer_request

pytestmark = pytest.mark.integration

FLOOD_S = 5.0
FLOODERS = 2  # processes, each with its own connection (a new one when the front closes it)
SETTLE_S = 10.0  # this long after the flood, the front is back
RSS_SLACK_BYTES = 30 * 1024 * 1024
METHOD = "/inference.GRPCInferenceService/ServerLive"


def flood(host: str, port: int, seconds: float, sent: multiprocessing.Value) -> None:
    """Opens a stream and resets it at once, in a loop; reconnects when the server hangs up."""
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", METHOD),
        (":authority", f"{host}:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        sock = socket.create_connection((host, port), timeout=5)
        sock.setblocking(False)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        try:
            while time.monotonic() < end:
                for _ in range(100):
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, headers)
                    conn.reset_stream(stream_id)
                    count += 1
                sock.sendall(conn.data_to_send())
                try:  # take in what the server says (settings, refusals), without waiting
                    data = sock.recv(1 << 20)
                    if not data:
                        break  # closed on us: connect again
                    conn.receive_data(data)
                except BlockingIOError:
                    pass
        except (OSError, h2.exceptions.ProtocolError):
            pass  # reset by the server, or the stream ids ran out: connect again
        finally:
            sock.close()
    with sent.get_lock():
        sent.value += count


def front_metrics(stack) -> dict[str, float]:
    with urllib.request.urlopen(stack.metrics_url("gateway"), timeout=10) as reply:
        text = reply.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_rapid_reset_flood_leaves_others_served_and_the_front_as_it_was(stack, client, trained):
    if installed_program(FRONT_PROGRAM) is None:
        if os.environ.get("TWINBENCH_FRONT_TESTS") == "required":
            pytest.fail("the gateway front is not built: `make native` needs Go (see README)")
        pytest.skip("the gateway front is not built (`make native`)")
    pid = front_pid(stack)
    assert pid is not None
    job, _ = trained["torch"]
    model = next(e.model_name for e in job.exports if e.format == "onnx")
    image = load_dataset("mnist-5k").test.x[:1]
    # Warm: the front has served the model once, so the figures before are its working state.
    client.inference.ModelInfer(infer_request(model, image), timeout=30, wait_for_ready=True)
    before = front_metrics(stack)
    goroutines_before, rss_before = before["go_goroutines"], rss_bytes(pid)

    context = multiprocessing.get_context("spawn")  # no copy of this process's threads
    sent = context.Value("l", 0)
    host, port = stack.gateway_address.rsplit(":", 1)
    flooders = [
        context.Process(target=flood, args=(host, int(port), FLOOD_S, sent))
        for _ in range(FLOODERS)
    ]
    served, failures = [0], []
    stop = threading.Event()

    def well_behaved() -> None:
        while not stop.is_set():
            try:
                live = client.inference.ServerLive(ipb.ServerLiveRequest(), timeout=10)
                client.inference.ModelInfer(infer_request(model, image), timeout=10)
                served[0] += live.live
            except grpc.RpcError as exc:
                failures.append(exc.code())

    for p in flooders:
        p.start()
    caller = threading.Thread(target=well_behaved)
    caller.start()
    for p in flooders:
        p.join(FLOOD_S + 60)
        assert p.exitcode == 0, "a flooder failed"
    stop.set()
    caller.join(30)
    flood_ended = time.monotonic()

    assert sent.value > 1000, f"only {sent.value} streams were opened: no flood"
    assert failures == [], f"the well-behaved client failed during the flood: {failures[:5]}"
    assert served[0] > 0, "the well-behaved client got no answer during the flood"

    # Within SETTLE_S of the flood's end: memory and goroutines back near where they were.
    latest: dict[str, float] = {}  # the last look, for the summary

    def settled() -> bool:
        latest["goroutines"], latest["rss"] = front_metrics(stack)["go_goroutines"], rss_bytes(pid)
        return (
            latest["rss"] - rss_before <= RSS_SLACK_BYTES
            and latest["goroutines"] <= 2 * goroutines_before
        )

    def summary() -> str:
        after = front_metrics(stack)
        return (
            f"flood: {sent.value:,} streams opened and reset in {FLOOD_S:g} s by {FLOODERS}"
            f" clients; the well-behaved client got {served[0]} answers; refused"
            f" {after['twinbench_front_streams_refused_total']:,.0f} streams, closed"
            f" {after['twinbench_front_connections_closed_total']:,.0f} connections; RSS"
            f" {rss_before / 2**20:.1f} -> {latest['rss'] / 2**20:.1f} MiB, goroutines"
            f" {goroutines_before:.0f} -> {latest['goroutines']:.0f}"
        )

    until(
        settled,
        "the front's memory and goroutines back near where they were",
        flood_ended + SETTLE_S - time.monotonic(),  # counted from the flood's end
        poll_s=0.2,
        on_timeout=summary,
    )
    print("\n" + summary())
    # And it still serves: a new connection, a new call.
    with grpc.insecure_channel(stack.gateway_address) as channel:
        live = channel.unary_unary(
            METHOD,
            request_serializer=ipb.ServerLiveRequest.SerializeToString,
            response_deserializer=ipb.ServerLiveResponse.FromString,
        )
        assert live(ipb.ServerLiveRequest(), timeout=10).live
