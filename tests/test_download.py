"""`twinbench data download` against a real HTTP server on loopback: checksums, resume, offline."""

import hashlib
import http.server
import socket
import threading

import pytest

from twinbench.data.download import Source, download
from twinbench.errors import Unavailable

FILES = {"train-images-idx3-ubyte.gz": b"x" * 5000, "t10k-labels-idx1-ubyte.gz": b"y" * 300}


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves FILES, honouring `Range: bytes=N-` as a resuming client sends it."""

    ranges: list[str] = []

    def do_GET(self):
        body = FILES.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        status, start = 200, 0
        if "Range" in self.headers:
            self.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def source(base_url, sums=None):
    return Source(base_url, sums or {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()})


def test_download_checks_and_skips_what_is_there(server, tmp_path):
    report = download("mnist", tmp_path, source(server))
    assert all("downloaded, checksum ok" in line for line in report)
    assert (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes() == FILES[
        "train-images-idx3-ubyte.gz"
    ]
    again = download("mnist", tmp_path, source(server))
    assert all("present, checksum ok" in line for line in again)


def test_a_partial_download_resumes(server, tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz.part").write_bytes(b"x" * 1200)
    report = download("mnist", tmp_path, source(server))
    assert report[0] == "train-images-idx3-ubyte.gz: downloaded (resumed), checksum ok"
    assert RangeHandler.ranges == ["bytes=1200-"]
    assert len((tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()) == 5000


def test_a_wrong_checksum_keeps_nothing(server, tmp_path):
    sums = dict.fromkeys(FILES, "0" * 64)
    with pytest.raises(Unavailable, match="does not match"):
        download("mnist", tmp_path, source(server, sums))
    assert list((tmp_path / "mnist").iterdir()) == []


def test_offline_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="Offline\\? Copy the files into"):
        download("mnist", tmp_path, source(f"http://127.0.0.1:{port}/"), timeout_s=5)
