"""Fetches a pinned Go toolchain from the Go module proxy (module golang.org/toolchain), for image
builds on a base that has no Go: the same Go release as the official golang image, checked
against the SHA-256 pinned in the Dockerfile.

    python3 fetch_toolchain.py VERSION SHA256_AMD64 SHA256_ARM64 DEST

GOPROXY (its first URL) says where the proxy is; SSL_CERT_FILE, a CA bundle to trust beyond the
system's (a proxy that re-signs TLS). Go ends up in DEST/bin/go.
"""

import hashlib
import os
import platform
import shutil
import ssl
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def main() -> None:
    version, sha_amd64, sha_arm64, dest = sys.argv[1:5]
    arch = ARCHES.get(platform.machine().lower())
    if arch is None:
        sys.exit(f"fetch_toolchain: no pinned Go for {platform.machine()}")
    expected = {"amd64": sha_amd64, "arm64": sha_arm64}[arch]
    proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0].split("|")[0]
    if proxy in ("off", "direct", ""):
        sys.exit(f"fetch_toolchain: GOPROXY={proxy}: no proxy to fetch Go from")
    module = f"v0.0.1-go{version}.linux-{arch}"
    url = f"{proxy.rstrip('/')}/golang.org/toolchain/@v/{module}.zip"
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as archive:
        with urllib.request.urlopen(url, context=context, timeout=120) as reply:
            while chunk := reply.read(1 << 20):
                digest.update(chunk)
                archive.write(chunk)
        if digest.hexdigest() != expected:
            sys.exit(f"fetch_toolchain: {url} has SHA-256 {digest.hexdigest()}, not {expected}")
        prefix = f"golang.org/toolchain@{module}/"
        root = Path(dest)
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.filename.startswith(prefix) or info.is_dir():
                    continue
                target = root / info.filename[len(prefix) :]
                if root.resolve() not in target.resolve().parents:
                    sys.exit(f"fetch_toolchain: {info.filename} lies outside {dest}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                target.chmod((info.external_attr >> 16) & 0o755 or 0o644)  # zip keeps the modes
    print(f"fetch_toolchain: Go {version} ({arch}) from {proxy} in {dest}")


if __name__ == "__main__":
    main()
