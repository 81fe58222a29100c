"""The inference link: how the gateway hands ModelInfer requests to a trainer.

Why not a second gRPC call: in Python each side of a gRPC call costs about 0.2 ms of CPU, so a
gateway that forwarded over gRPC cost as much as the trainer's whole V2 endpoint. The gateway
never needs more than the serialized requests and replies, so the link carries exactly those,
length-prefixed on persistent TCP connections (TorchServe's frontend talks to its workers the
same way), and carries several at once when the gateway batches. One side of a call costs about
0.04 ms. Clients never see the link: they speak V2 gRPC to the gateway, or to a trainer directly.

A frame, big-endian: u32 length of the rest, u32 item count, then the items.
  request item: u32 length, a serialized ModelInferRequest
  reply item:   u8 status (gRPC's numbering, 0 is OK), u32 length, a serialized
                ModelInferResponse, or the error message in UTF-8
Replies come in the order of the requests. A connection carries one frame at a time.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable

import grpc

from twinbench.errors import DeadlineExceeded, TwinbenchError, Unavailable

log = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
_REPLY_HEAD = struct.Struct(">BI")
OK = grpc.StatusCode.OK.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
Reply = tuple[int, bytes]  # (status, payload)

# Frames carry requests the gateway has already size-checked; this leaves room for the headers.
FRAME_SLACK_BYTES = 1024 * 1024


class LinkError(Exception):
    """A frame that breaks the format: the connection that sent it is closed."""


def status_of(exc: TwinbenchError) -> int:
    return grpc.StatusCode[exc.code].value[0]


def status_name(status: int) -> str:
    return next((code.name for code in grpc.StatusCode if code.value[0] == status), "UNKNOWN")


def encode_requests(requests: list[bytes]) -> bytes:
    parts = [_U32.pack(len(requests))]
    for request in requests:
        parts += (_U32.pack(len(request)), request)
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def encode_replies(replies: list[Reply]) -> bytes:
    parts = [_U32.pack(len(replies))]
    for status, payload in replies:
        parts += (_REPLY_HEAD.pack(status, len(payload)), payload)
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def decode_requests(body: bytes) -> list[bytes]:
    view = memoryview(body)
    (count,), at = _U32.unpack_from(view), 4
    requests = []
    for _ in range(count):
        if at + 4 > len(view):
            raise LinkError("a request frame ends inside an item header")
        (length,), at = _U32.unpack_from(view, at), at + 4
        if at + length > len(view):
            raise LinkError("a request frame ends inside an item")
        requests.append(bytes(view[at : at + length]))
        at += length
    if at != len(view):
        raise LinkError("a request frame has bytes after its last item")
    return requests


def decode_replies(body: bytes, expected: int) -> list[Reply]:
    view = memoryview(body)
    (count,), at = _U32.unpack_from(view), 4
    if count != expected:
        raise LinkError(f"{count} replies to {expected} requests")
    replies = []
    for _ in range(count):
        status, length = _REPLY_HEAD.unpack_from(view, at)
        at += _REPLY_HEAD.size
        replies.append((status, bytes(view[at : at + length])))
        at += length
    return replies


def _read_exact(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the peer closed the connection")
        got += n
    return bytes(buffer)


def read_frame(sock: socket.socket, limit: int, deadline: float | None = None) -> bytes:
    (length,) = _U32.unpack(_read_exact(sock, 4, deadline))
    if not 4 <= length <= limit:
        raise LinkError(f"a frame of {length} bytes (the limit is {limit})")
    return _read_exact(sock, length, deadline)


# --- the trainer's side ---


class LinkServer:
    """Serves frames on `address` with `handle(requests) -> replies`; a thread per connection.

    The gateway keeps its connections open, so there are about as many threads as it has
    requests in flight at once.
    """

    def __init__(self, address: str, handle: Callable[[list[bytes]], list[Reply]], limit: int):
        host, port = address.rsplit(":", 1)
        connections: set[socket.socket] = set()
        stopping = threading.Event()
        self._connections, self._stopping = connections, stopping

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections.add(sock)
                try:
                    while True:
                        requests = decode_requests(read_frame(sock, limit))
                        if stopping.is_set():
                            return  # unanswered: the gateway tries again elsewhere or says so
                        sock.sendall(encode_replies(handle(requests)))
                except (ConnectionError, OSError):
                    pass  # the gateway went away, closed a connection it gave up on, or we stop
                except (LinkError, struct.error) as exc:
                    log.warning("closing an inference link connection: %s", exc)
                finally:
                    connections.discard(sock)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            # socketserver's default backlog is 5: a burst of new connections (a gateway starting
            # under load opens one per request in flight) overflows it, the kernel answers with
            # SYN cookies, and some connections are reset on their first write.
            request_queue_size = 1024

        self._server = Server((host, int(port)), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="inference-link", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Takes no new connections; each open one ends after the frame it is serving, if any."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for sock in list(self._connections):
            try:
                sock.shutdown(socket.SHUT_RD)  # a wait for the next frame ends; a reply still goes
            except OSError:
                pass


# --- the gateway's side ---


class LinkClient:
    """Calls one trainer's link; a pool of persistent connections, one per call in flight."""

    def __init__(self, address: str, name: str, limit: int) -> None:
        self.address = address
        self.name = name  # says whose link failed, in errors
        self.limit = limit
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def _connect(self, timeout: float) -> socket.socket:
        host, port = self.address.rsplit(":", 1)
        try:
            sock = socket.create_connection((host, int(port)), timeout=min(timeout, 2.0))
        except TimeoutError:
            raise DeadlineExceeded(f"the {self.name} did not answer in time") from None
        except OSError:
            raise Unavailable(f"the {self.name} at {self.address} is unavailable") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def call(self, requests: list[bytes], timeout: float) -> list[Reply]:
        """Sends the requests in one frame and returns their replies, in order.

        A pooled connection may have died with a trainer that restarted since; the frame is then
        sent once more on a new connection (inference has no side effects, so a repeat is safe).
        """
        deadline = time.monotonic() + timeout
        frame = encode_requests(requests)
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        while True:
            fresh = sock is None
            if sock is None:
                sock = self._connect(max(0.0, deadline - time.monotonic()))
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(frame)
                replies = decode_replies(read_frame(sock, self.limit, deadline), len(requests))
            except TimeoutError:
                sock.close()  # its late reply would be read as the next call's
                raise DeadlineExceeded(f"the {self.name} did not answer in time") from None
            except (ConnectionError, OSError, LinkError, struct.error):
                sock.close()
                if fresh:
                    raise Unavailable(f"the {self.name} at {self.address} is unavailable") from None
                sock = None  # a stale pooled connection: once more, on a new one
                continue
            with self._lock:
                self._idle.append(sock)
            return replies

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


class _Waiting:
    __slots__ = ("request", "deadline", "reply", "error", "turn")

    def __init__(self, request: bytes, timeout: float) -> None:
        self.request = request
        self.deadline = time.monotonic() + timeout
        self.reply: Reply | None = None
        self.error: Exception | None = None
        self.turn = threading.Event()  # set when the reply is in, or when it is this one's turn


class BatchingCaller:
    """Dynamic batching for one model: concurrent requests travel to the trainer in one frame.

    No thread of its own: the first caller that finds no frame in flight sends one with every
    request waiting (itself included, up to `max_items` and `max_bytes`); callers that arrive
    meanwhile wait, and when the frame returns the first of them sends the next. A lone caller
    sends at once, so batching costs nothing at low load, and batches grow with the load. With
    `delay_s`, a sender first waits that long for company while the batch is not full.

    One request never fails another: a merged frame that fails as a whole (other than by its
    deadline) is sent again one request at a time, so only a request that fails alone fails, and
    a request whose deadline passed while it queued is answered DEADLINE_EXCEEDED, not sent.
    """

    def __init__(
        self,
        call: Callable[[list[bytes], float], list[Reply]],
        max_items: int,
        max_bytes: int,
        delay_s: float = 0.0,
    ) -> None:
        self._call = call
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._sending = False

    def queued(self) -> int:
        """Requests waiting for a frame (not those in the frame out now)."""
        with self._lock:
            return len(self._waiting)

    def call(self, request: bytes, timeout: float) -> Reply:
        me = _Waiting(request, timeout)
        with self._lock:
            self._waiting.append(me)
            send_now = not self._sending
            self._sending = True
        if not send_now:
            me.turn.wait()
        if me.reply is None and me.error is None:
            self._send_batch()  # our turn: our request is at the head of the queue
        if me.error is not None:
            raise me.error
        assert me.reply is not None  # a frame's sender sets a reply or an error for each request
        return me.reply

    def _take(self) -> list[_Waiting]:
        with self._lock:
            size = count = 0
            for item in self._waiting[: self.max_items]:
                if count and size + len(item.request) > self.max_bytes:
                    break
                size += len(item.request)
                count += 1
            batch, self._waiting = self._waiting[:count], self._waiting[count:]
            return batch

    def _send(self, batch: list[_Waiting]) -> None:
        """Sends `batch` as one frame and gives each its reply; a merged frame that fails is sent
        again one request at a time."""
        if not batch:
            return
        # The longest wait of the batch: nobody's answer is cut short by a neighbour's deadline.
        timeout = max(w.deadline for w in batch) - time.monotonic()
        try:
            replies = self._call([w.request for w in batch], max(timeout, 0.001))
        except DeadlineExceeded as exc:  # the frame's time is up: so is every request's in it
            for waiting in batch:
                waiting.error = exc
            return
        except Exception as exc:  # noqa: BLE001 - a request's own failure is its reply
            if len(batch) == 1:
                batch[0].error = exc
                return
            for waiting in batch:
                self._send([waiting])
            return
        for waiting, reply in zip(batch, replies, strict=True):
            waiting.reply = reply

    def _send_batch(self) -> None:
        if self.delay_s:
            deadline = time.monotonic() + self.delay_s
            while len(self._waiting) < self.max_items and time.monotonic() < deadline:
                time.sleep(min(self.delay_s / 10, max(0.0, deadline - time.monotonic())))
        batch = self._take()
        try:
            now = time.monotonic()
            for waiting in batch:
                if waiting.deadline <= now:
                    waiting.error = DeadlineExceeded(
                        "the request's deadline passed while it queued"
                    )
            self._send([w for w in batch if w.error is None])
        finally:  # whatever happened, the queue moves on: a stuck turn would stall the model
            with self._lock:
                if self._waiting:
                    self._waiting[0].turn.set()  # the next frame is theirs to send
                else:
                    self._sending = False
            for waiting in batch:
                waiting.turn.set()
