"""HTTP/2 abuse against the gateway's front, one attack at a time: rapid reset, ping floods, huge
header lists, CONTINUATION floods, and clients that never take their responses. During each, the
front's peak RSS stays under the bound its settings give, a well-behaved client is served, and
afterwards its goroutines and live heap are back at their baseline; three ping floods in a row
do not ratchet its memory up.

The front runs on its own here, with small limits (so that the bound is small), before a fake
gateway (ServerLive) and a fake trainer link (ModelInfer); every load targets 127.0.0.1 and is
bounded in time and connections.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import hpack
import pytest

from tests_support import until
from twinbench.config import FRONT_PROGRAM, installed_program

pytestmark = pytest.mark.integration

# The front's limits in these tests, and the bound on its memory they give (see docs/security.md):
# each connection holds at most MAX_STREAMS streams, each at most a request and a reply of
# MAX_MESSAGE bytes (twice: gRPC's buffer and ours), and its own fixed share (read and write
# buffers, HPACK tables, and up to gRPC-go's 10,000 queued control frames); the Go heap may grow
# to twice what is live before it collects (GOGC=100).
MAX_MESSAGE = 64 * 1024
MAX_STREAMS = 8
MAX_CONNECTIONS = 16
PER_CONNECTION_BYTES = 1024 * 1024
BOUND_BYTES = 2 * MAX_CONNECTIONS * (MAX_STREAMS * 2 * 2 * MAX_MESSAGE + PER_CONNECTION_BYTES)
ATTACK_S = 4.0
SETTLE_S = 15.0  # after an attack, how long the front may take to be back at its baseline
HEAP_SLACK_BYTES = 4 * 1024 * 1024
GOROUTINE_SLACK = 8
BIG_REPLY = MAX_MESSAGE - 1024  # what the fake trainer answers "big-torch-onnx" with
METHOD = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"


def infer_request(model: str, payload: bytes = b"") -> bytes:
    """A serialized ModelInferRequest: model_name (field 1), raw_input_contents (field 7)."""
    name = model.encode()
    request = b"\x0a" + _varint(len(name)) + name
    return request + (b"\x3a" + _varint(len(payload)) + payload if payload else b"")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def grpc_message(request: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(request)) + request


# --- the fakes behind the front ---


class FakeTrainer(socketserver.ThreadingTCPServer):
    """The inference link's trainer side: answers each request with its model name, or with
    BIG_REPLY bytes for "big-*" models."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _LinkHandler)


class _LinkHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        try:
            while True:
                (length,) = struct.unpack(">I", _read(sock, 4))
                body = _read(sock, length)
                (count,), at, replies = struct.unpack_from(">I", body), 4, []
                for _ in range(count):
                    (n,) = struct.unpack_from(">I", body, at)
                    request = body[at + 4 : at + 4 + n]
                    at += 4 + n
                    name = request[2 : 2 + request[1]]
                    payload = b"x" * BIG_REPLY if name.startswith(b"big-") else b"served " + name
                    replies.append(struct.pack(">BI", 0, len(payload)) + payload)
                out = struct.pack(">I", count) + b"".join(replies)
                sock.sendall(struct.pack(">I", len(out)) + out)
        except (ConnectionError, OSError, struct.error):
            pass


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


def fake_gateway() -> tuple[grpc.Server, int]:
    """The Python gateway's stand-in: ServerLive, as bytes (live = true)."""
    server = grpc.server(futures.ThreadPoolExecutor(8))
    live = grpc.unary_unary_rpc_method_handler(lambda request, context: b"\x08\x01")
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService", {"ServerLive": live}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@dataclass
class Front:
    proc: subprocess.Popen
    port: int
    metrics_port: int

    def metrics(self, gc: bool = False) -> dict[str, float]:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics" + ("?gc=1" if gc else "")
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                values[name] = float(value)
        return values

    def rss(self) -> int:
        return _status_bytes(self.proc.pid, "VmRSS")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def peak(self) -> int:
        return _status_bytes(self.proc.pid, "VmHWM")


def _status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    program = installed_program(FRONT_PROGRAM)
    if program is None:
        if os.environ.get("TWINBENCH_FRONT_TESTS") == "required":
            pytest.fail("the gateway front is not built: `make native` needs Go (see README)")
        pytest.skip("the gateway front is not built (`make native`)")
    trainer = FakeTrainer()
    threading.Thread(target=trainer.serve_forever, daemon=True).start()
    gateway, gateway_port = fake_gateway()
    proc = subprocess.Popen(
        [
            str(program),
            "-listen=127.0.0.1:0",
            f"-control=127.0.0.1:{gateway_port}",
            f"-links=torch=127.0.0.1:{trainer.server_address[1]}",
            f"-max-message-bytes={MAX_MESSAGE}",
            f"-max-streams={MAX_STREAMS}",
            f"-max-connections={MAX_CONNECTIONS}",
            "-batching=off",
        ],
        stdin=subprocess.PIPE,  # held open: the front exits when it closes
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # gRPC's log of every connection it cuts off
    )
    try:
        port, metrics_port = map(int, proc.stdout.readline().split())
        yield Front(proc, port, metrics_port)
    finally:
        proc.terminate()
        proc.wait(10)
        gateway.stop(0)
        trainer.shutdown()
        trainer.server_close()


# --- the well-behaved client, and the figures ---


@dataclass
class GoodClient:
    """Calls ModelInfer and ServerLive in turn on its own connection, opened before the attack."""

    port: int
    served: int = 0
    failures: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.infer = self.channel.unary_unary(METHOD)
        self.live = self.channel.unary_unary(LIVE)
        self.call()  # connected, and served, before anything else happens

    def call(self) -> None:
        assert self.infer(infer_request("m-torch-onnx"), timeout=10) == b"served m-torch-onnx"
        assert self.live(b"", timeout=10) == b"\x08\x01"

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.call()
                self.served += 1
            except grpc.RpcError as exc:
                self.failures.append(exc.code())
            self._stop.wait(0.01)  # a steady client, not a flood; returns at once when stopped

    def __enter__(self) -> GoodClient:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        self.channel.close()


@dataclass
class Figures:
    rss_before: int
    peak: int = 0
    rss_after: int = 0
    goroutines: tuple[float, float] = (0, 0)
    heap: tuple[float, float] = (0, 0)
    served: int = 0
    sent: int = 0

    def line(self, name: str) -> str:
        mib = 1 / 2**20
        return (
            f"{name}: RSS {self.rss_before * mib:.1f} MiB before, {self.peak * mib:.1f} peak during"
            f" (bound {(self.rss_before + BOUND_BYTES) * mib:.0f}), {self.rss_after * mib:.1f} after;"
            f" live heap {self.heap[0] * mib:.1f} -> {self.heap[1] * mib:.1f} MiB; goroutines"
            f" {self.goroutines[0]:.0f} -> {self.goroutines[1]:.0f}; {self.sent:,} attack frames"
            f" or streams; the good client was served {self.served} times"
        )


def baseline(front: Front) -> tuple[float, float]:
    m = front.metrics(gc=True)
    return m["go_goroutines"], m["twinbench_front_heap_live_bytes"]


def attack(front: Front, name: str, target: Callable, *args) -> Figures:
    """Runs `target(port, seconds, sent, *args)` in ATTACKERS processes while the good client
    calls; checks the bound, the good client, and the front's return to its baseline."""
    goroutines0, heap0 = baseline(front)
    figures = Figures(rss_before=front.rss())
    context = multiprocessing.get_context("spawn")  # no copy of this process's threads
    sent = context.Value("q", 0)
    front.reset_peak()
    with GoodClient(front.port) as good:
        attackers = [
            context.Process(target=target, args=(front.port, ATTACK_S, sent, *args))
            for _ in range(ATTACKERS)
        ]
        for p in attackers:
            p.start()
        for p in attackers:
            p.join(ATTACK_S + 60)
            assert p.exitcode == 0, f"an attacker of {name} failed"
        figures.peak = front.peak()
    figures.served, figures.sent = good.served, sent.value
    assert good.failures == [], f"{name}: the good client failed: {good.failures[:5]}"
    assert good.served > 0, f"{name}: the good client was not served"
    assert figures.sent > 0, f"{name}: no attack"
    ended = time.monotonic()

    def settled() -> bool:
        figures.goroutines = goroutines0, (now := baseline(front))[0]
        figures.heap = heap0, now[1]
        return now[0] <= goroutines0 + GOROUTINE_SLACK and now[1] <= heap0 + HEAP_SLACK_BYTES

    until(settled, f"the front back at its baseline after {name}", SETTLE_S, poll_s=0.5,
          on_timeout=lambda: figures.line(name))  # fmt: skip
    figures.rss_after = front.rss()
    GoodClient(front.port).channel.close()  # a new client, on a new connection, is served
    print("\n" + figures.line(name) + f" (settled in {time.monotonic() - ended:.1f} s)")
    assert figures.peak <= figures.rss_before + BOUND_BYTES, figures.line(name)
    return figures


ATTACKERS = 2  # processes, each with its own connections


# --- the attacks (each in its own process; `sent` counts what it sent) ---

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 1, 3, 4, 6, 9
END_STREAM, END_HEADERS = 0x1, 0x4


def request_headers(port: int, extra: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "http"), (":path", METHOD),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers"),
        *extra,
    ]  # fmt: skip


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return sock


def drain(sock: socket.socket) -> bool:
    """Reads whatever the server sent, without waiting; False once it has closed."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(1 << 20):
                return False
        except OSError:
            return False
    return True


def add(sent, n: int) -> None:
    with sent.get_lock():
        sent.value += n


def rapid_reset(port: int, seconds: float, sent) -> None:
    """Opens ModelInfer streams, request and all, and resets each at once, as fast as it can."""
    end = time.monotonic() + seconds
    encoder = hpack.Encoder()
    message = grpc_message(infer_request("m-torch-onnx"))
    while time.monotonic() < end:
        sock, stream, count = connect(port), 1, 0
        try:
            while time.monotonic() < end and stream < 2**31 - 200:
                burst = []
                for _ in range(100):
                    block = encoder.encode(request_headers(port))
                    burst += [frame(HEADERS, END_HEADERS, stream, block),
                              frame(0, END_STREAM, stream, message),
                              frame(RST_STREAM, 0, stream, struct.pack(">I", 8))]  # fmt: skip
                    stream += 2
                sock.sendall(b"".join(burst))
                count += 100
                if not drain(sock):
                    break
        except OSError:
            pass  # closed on us, or it stopped reading us: connect again
        finally:
            sock.close()
            add(sent, count)
            encoder = hpack.Encoder()


def ping_flood(port: int, seconds: float, sent, read: bool) -> None:
    """PINGs, a thousand a write, as fast as it can; reading its answers or never."""
    end = time.monotonic() + seconds
    pings = frame(PING, 0, 0, b"\x00" * 8) * 1000
    held = []  # connections it never reads, kept open to the end
    while time.monotonic() < end:
        sock, count = connect(port), 0
        sock.settimeout(0.5)
        try:
            while time.monotonic() < end:
                sock.sendall(pings)
                count += 1000
                if read and not drain(sock):
                    break
        except OSError:
            pass  # closed (too_many_pings), or it stopped reading us: another connection
        finally:
            add(sent, count)
            if read or len(held) >= MAX_CONNECTIONS:
                sock.close()
            else:
                held.append(sock)
    for sock in held:
        sock.close()


def huge_headers(port: int, seconds: float, sent) -> None:
    """Calls with 1 MiB header lists (a HEADERS frame and CONTINUATIONs), on new streams."""
    end = time.monotonic() + seconds
    pad = [(f"x-pad-{i}", "v" * 1000) for i in range(1000)]
    # Never-indexed literals: the block leaves HPACK's table alone, so it serves every stream.
    block = hpack.Encoder().encode([(k, v, True) for k, v in request_headers(port, pad)])
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    while time.monotonic() < end:
        sock, stream, count = connect(port), 1, 0
        try:
            while time.monotonic() < end:
                frames = [frame(HEADERS, 0, stream, chunks[0])]
                frames += [frame(CONTINUATION, 0, stream, c) for c in chunks[1:-1]]
                frames.append(frame(CONTINUATION, END_HEADERS, stream, chunks[-1]))
                sock.sendall(b"".join(frames))
                stream += 2
                count += 1
                if not drain(sock):
                    break
        except OSError:
            pass
        finally:
            sock.close()
            add(sent, count)


def continuation_flood(port: int, seconds: float, sent) -> None:
    """A HEADERS frame, then CONTINUATION frames that never end the header block."""
    end = time.monotonic() + seconds
    junk = hpack.Encoder().encode([(f"x-{i}", "j" * 100) for i in range(150)])[:16384]
    while time.monotonic() < end:
        sock, count = connect(port), 0
        try:
            block = hpack.Encoder().encode(request_headers(port))
            sock.sendall(frame(HEADERS, 0, 1, block))
            while time.monotonic() < end:
                sock.sendall(frame(CONTINUATION, 0, 1, junk) * 16)
                count += 16
                if not drain(sock):
                    break
        except OSError:
            pass
        finally:
            sock.close()
            add(sent, count)


def never_reads(port: int, seconds: float, sent) -> None:
    """On as many connections as the front lets it have (and more), as many big-reply calls as
    it may open, with a flow-control window of 0: the front can send none of the replies."""
    end = time.monotonic() + seconds
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    message = grpc_message(infer_request("big-torch-onnx", b"r" * (MAX_MESSAGE - 1024)))
    conns = []
    for _ in range(MAX_CONNECTIONS + 4):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        sock.sendall(conn.data_to_send())
        sock.setblocking(False)
        conns.append((sock, conn))
    count = 0
    while time.monotonic() < end:
        for sock, conn in conns:
            try:
                data = sock.recv(1 << 20)  # the server's SETTINGS and WINDOW_UPDATEs, refusals
                if data:
                    conn.receive_data(data)  # never a WINDOW_UPDATE of ours: nothing is read
            except BlockingIOError:
                pass
            except (OSError, h2.exceptions.ProtocolError):
                continue
            try:
                # Up to the front's stream limit, and beyond (those are refused).
                if conn.open_outbound_streams < 2 * MAX_STREAMS:
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, request_headers(port))
                    if conn.local_flow_control_window(stream) >= len(message):
                        for at in range(0, len(message), 16384):
                            last = at + 16384 >= len(message)
                            conn.send_data(stream, message[at : at + 16384], end_stream=last)
                        count += 1
                    else:
                        conn.reset_stream(stream)
                sock.send(conn.data_to_send())
            except (OSError, h2.exceptions.ProtocolError, h2.exceptions.FlowControlError):
                pass
        select.select([sock for sock, _ in conns], [], [], 0.01)  # until the front writes
    for sock, _ in conns:
        sock.close()
    add(sent, count)


# --- the tests ---


def test_rapid_reset(front):
    attack(front, "rapid reset", rapid_reset)


def test_three_ping_floods_in_a_row_do_not_ratchet_memory_up(front):
    floods = [
        attack(front, f"ping flood {i + 1} (never reading)", ping_flood, False) for i in range(3)
    ]
    first, last = floods[0], floods[-1]
    # The third flood holds no more than the first: what a flood took, the front gave back.
    assert last.peak <= first.peak + 16 * 2**20, [f.line("ping flood") for f in floods]
    assert last.heap[1] <= first.heap[0] + HEAP_SLACK_BYTES


def test_ping_flood_reading_the_acks(front):
    attack(front, "ping flood (reading)", ping_flood, True)


def test_huge_header_lists(front):
    attack(front, "1 MiB header lists", huge_headers)


def test_continuation_flood(front):
    attack(front, "CONTINUATION flood", continuation_flood)


def test_clients_that_never_read_their_responses(front):
    attack(front, "clients that never read", never_reads)
