"""The gateway's front (front/main.go) as a child of the gateway's process: started and watched.

With the front, the public port is the front's: it serves ModelInfer over the trainers'
inference links and relays every other call to this process, which then listens on loopback
only. Without it (not built, or TWINBENCH_GATEWAY_FRONT=off) this process serves the public
port itself, with the same API and slower inference.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

from twinbench.config import Settings

log = logging.getLogger(__name__)


class Front:
    """The front as a child process; it exits when this process does, however that happens."""

    def __init__(self, binary: Path, settings: Settings, control_port: int) -> None:
        self.binary = binary
        self.settings = settings
        self.control_port = control_port
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self.died = False  # it exited without being asked to
        self.metrics_url: str | None = None  # its own /metrics, on loopback

    def _args(self, listen: str) -> list[str]:
        s = self.settings
        # The running trainers' links; a model of another framework goes to the gateway, which
        # says that its trainer does not run.
        links = ",".join(f"{fw}={s.trainer_link_address(fw)}" for fw in s.frameworks)
        args = [
            str(self.binary),
            f"-listen={listen}",
            f"-control=127.0.0.1:{self.control_port}",
            f"-links={links}",
            f"-max-message-bytes={s.max_message_bytes}",
            f"-backend-timeout-s={s.backend_timeout_s}",
            f"-batching={s.dynamic_batching}",
            f"-batch-max-rows={s.batch_max_rows}",
            f"-batch-delay-us={round(s.batch_delay_s * 1e6)}",
            f"-inference-open={str(s.inference_open).lower()}",
            f"-max-connections={s.front_max_connections}",
            f"-max-streams={s.front_max_streams}",
            f"-max-header-bytes={s.front_max_header_bytes}",
            "-metrics-listen=127.0.0.1:0",
        ]
        if s.batch_models:  # only when set: a front built before the flag starts as before
            args.append(f"-batch-models={s.batch_models}")
        if s.tls_cert:
            args += [f"-tls-cert={s.tls_cert}", f"-tls-key={s.tls_key}"]
        return args

    def start(self, listen: str) -> int:
        """Starts the front on `listen` and returns its port once it listens."""
        env = {**os.environ, "TWINBENCH_TOKEN": self.settings.token}  # never on its command line
        self._proc = proc = subprocess.Popen(
            self._args(listen),
            env=env,
            stdin=subprocess.PIPE,  # held open: when this process ends, the front sees EOF
            stdout=subprocess.PIPE,
            # Its own session: a Ctrl-C in a terminal reaches the gateway, which stops the front
            # after its own calls have drained, not both at once.
            start_new_session=True,
        )
        assert proc.stdout is not None  # stdout=PIPE
        line = proc.stdout.readline().split()  # its one line: its port, its metrics port
        if len(line) != 2 or not all(p.isdigit() for p in line):
            proc.wait()
            raise SystemExit(f"the gateway front did not start (exit code {proc.returncode})")
        threading.Thread(
            target=self._watch, args=(proc,), name="gateway-front-watch", daemon=True
        ).start()
        self.metrics_url = f"http://127.0.0.1:{int(line[1])}/metrics"
        return int(line[0])

    def _watch(self, proc: subprocess.Popen) -> None:
        """A front that dies on its own takes the gateway down, so that it is restarted whole."""
        code = proc.wait()
        if not self._stopping.is_set():
            self.died = True
            log.error("the gateway front exited with code %s; stopping the gateway", code)
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self, grace_s: float) -> None:
        """Lets the inferences in flight finish, then ends it (after `grace_s`, by force)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._stopping.set()
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
