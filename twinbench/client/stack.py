"""Local mode: the three services as processes on loopback, started and stopped together."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from twinbench.config import (
    DEFAULT_LINK_PORTS,
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    FRAMEWORKS,
    Settings,
)
from twinbench.rpc.channel import is_serving


def trainer_service(framework: str) -> str:
    return f"{framework}_trainer"


def installed_frameworks() -> tuple[str, ...]:
    """The frameworks whose trainer can start here: torch and tf always (the base install), jax
    when its packages and its trainer service are there."""
    jax_there = (
        all(importlib.util.find_spec(name) is not None for name in ("jax", "flax", "optax"))
        and (
            Path(__file__).resolve().parents[2] / "services" / "jax_trainer" / "__main__.py"
        ).is_file()
    )
    return tuple(fw for fw in FRAMEWORKS if fw != "jax" or jax_there)


class LocalStack:
    """Starts the trainers of `frameworks` (by default the settings' TWINBENCH_FRAMEWORKS) and
    the gateway; `ports` of 0 let each pick a free one."""

    def __init__(
        self,
        settings: Settings,
        ports: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        frameworks: tuple[str, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.frameworks = tuple(settings.frameworks if frameworks is None else frameworks)
        unknown = set(self.frameworks) - set(FRAMEWORKS)
        if unknown or not self.frameworks:
            raise ValueError(f"frameworks {self.frameworks}: each one of {FRAMEWORKS}")
        self.trainers = tuple(trainer_service(fw) for fw in self.frameworks)
        ports = {**DEFAULT_PORTS, **(ports or {})}
        if any(ports.get(name) == 0 for name in ("gateway", *self.trainers)):
            # Asked for free ports: every service gets one.
            ports = {name: 0 for name in ports}
        self.ports = ports
        # A trainer asked to pick a free port picks a free one for its inference link too.
        self.link_ports = {
            t: 0 if self.ports[t] == 0 else DEFAULT_LINK_PORTS[t] for t in DEFAULT_LINK_PORTS
        }
        self.extra_env = env or {}  # more TWINBENCH_* settings for the services
        self.procs: dict[str, subprocess.Popen] = {}
        # Each service's /metrics port, known once it serves (free ones with free service ports).
        self.metrics_ports: dict[str, int] = {}

    @property
    def gateway_address(self) -> str:
        return self.address("gateway")

    def address(self, service: str) -> str:
        # A TLS certificate names a host, not an IP address: clients use localhost then.
        host = "localhost" if service == "gateway" and self.settings.tls_cert else "127.0.0.1"
        return f"{host}:{self.ports[service]}"

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 180.0) -> None:
        try:
            for service in self.trainers:
                self._spawn(service)
            for service in self.trainers:
                self._await(service, timeout_s)
            self._spawn("gateway")
            self._await("gateway", timeout_s)
        except BaseException:
            self.stop()
            raise

    def _env(self, service: str) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env.update(
            TWINBENCH_HOME=str(self.settings.home),
            TWINBENCH_LISTEN=f"127.0.0.1:{self.ports[service]}",
            TWINBENCH_FRAMEWORKS=",".join(self.frameworks),
            PYTHONUNBUFFERED="1",
        )
        for fw in self.frameworks:
            trainer = trainer_service(fw)
            env[f"TWINBENCH_{fw.upper()}_TRAINER"] = self.address(trainer)
            env[f"TWINBENCH_{fw.upper()}_TRAINER_LINK"] = f"127.0.0.1:{self.link_ports[trainer]}"
        if service in self.trainers:
            env["TWINBENCH_LINK_LISTEN"] = f"127.0.0.1:{self.link_ports[service]}"
        metrics_port = 0 if self.ports[service] == 0 else DEFAULT_METRICS_PORTS[service]
        env["TWINBENCH_METRICS_LISTEN"] = (
            f"127.0.0.1:{self.metrics_ports.get(service, metrics_port)}"
        )
        return env

    def _port_file(self, service: str, kind: str = "") -> Path:
        return self.settings.home / "run" / f"{service}{kind}.port"

    def _spawn(self, service: str) -> None:
        self.settings.logs.mkdir(parents=True, exist_ok=True)
        self._port_file(service).unlink(missing_ok=True)
        self._port_file(service, ".link").unlink(missing_ok=True)
        self._port_file(service, ".metrics").unlink(missing_ok=True)
        log = open(self.settings.logs / f"{service}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env=self._env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def _await(self, service: str, timeout_s: float) -> None:
        """Waits for the port file (the real port, when 0 was asked) and then for SERVING."""
        deadline = time.monotonic() + timeout_s
        proc = self.procs[service]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{service} exited with code {proc.returncode} while starting:\n"
                    + self.log_tail(service)
                )
            port_file = self._port_file(service)
            if port_file.exists():
                self.ports[service] = int(port_file.read_text())
                if service in self.trainers:  # its link's port file was written first
                    self.link_ports[service] = int(self._port_file(service, ".link").read_text())
                # Written before the gRPC port file, like the link's.
                self.metrics_ports[service] = int(self._port_file(service, ".metrics").read_text())
                tls_ca = self.settings.tls_ca if service == "gateway" else None
                if is_serving(self.address(service), tls_ca=tls_ca):
                    return
            time.sleep(0.2)
        raise TimeoutError(
            f"{service} was not serving after {timeout_s:.0f} s:\n" + self.log_tail(service)
        )

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.settings.logs / f"{service}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_service(self, service: str, grace_s: float = 20.0) -> None:
        proc = self.procs.pop(service, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, service: str, timeout_s: float = 180.0) -> None:
        """Stops one service and starts it again on the same port."""
        self.stop_service(service)
        self.start_service(service, timeout_s)

    def start_service(self, service: str, timeout_s: float = 180.0) -> None:
        self._spawn(service)
        self._await(service, timeout_s)

    def kill(self, service: str) -> None:
        """SIGKILL: the service gets no chance to clean up, as in a crash."""
        proc = self.procs.pop(service)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for service in ("gateway", *self.trainers):
            self.stop_service(service)


@contextlib.contextmanager
def services(
    settings: Settings, address: str, frameworks: tuple[str, ...] | None = None
) -> Iterator[tuple[str, LocalStack | None]]:
    """The gateway's address and the stack behind it: the running one (no stack), or a local
    stack started now, with the trainers of `frameworks` (default: the settings'), and stopped
    after."""
    if is_serving(address, tls_ca=settings.tls_ca):
        yield address, None
        return
    needed = tuple(dict.fromkeys(frameworks or settings.frameworks))  # each once, in order
    print(
        f"no gateway at {address}; starting the services ({', '.join(needed)} trainers;"
        f" state in {settings.home})"
    )
    try:
        with LocalStack(settings, frameworks=needed) as stack:
            yield stack.gateway_address, stack
    finally:  # also when the command failed or was stopped: they stop all the same
        print("stopped the services it started")
