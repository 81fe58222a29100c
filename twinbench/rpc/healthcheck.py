"""Container health probe: exits 0 when this service's gRPC health check says SERVING.

`python -m twinbench.rpc.healthcheck [ADDRESS]`; the address defaults to TWINBENCH_LISTEN with a
wildcard host replaced by loopback, so it works unchanged in every image. A TLS gateway is probed
as `localhost`, which its certificate must name.
"""

from __future__ import annotations

import os
import sys

from twinbench.config import load_settings
from twinbench.rpc.channel import is_serving


def probe_address(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def main(argv: list[str]) -> int:
    settings = load_settings()
    address = argv[0] if argv else probe_address(os.environ.get("TWINBENCH_LISTEN", ""))
    tls_ca = None
    if settings.tls_cert:  # a TLS gateway: trust its CA, or its own (self-signed) certificate
        tls_ca = settings.tls_ca or settings.tls_cert
        address = "localhost:" + address.rpartition(":")[2]
    return 0 if is_serving(address, timeout_s=3.0, tls_ca=tls_ca) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
