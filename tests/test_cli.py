"""The `twinbench` command as a user runs it: a command that needs the services starts them when
none answers, and one that cannot work that way says so."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing answers there


def _twinbench(home, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "TWINBENCH_HOME": str(home), "TWINBENCH_GATEWAY": _unused_address()}
    return subprocess.run(
        [sys.executable, "-m", "twinbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )


def test_detach_without_running_services_is_refused_with_what_to_do(tmp_path):
    result = _twinbench(tmp_path, "train", "--model", "mlp", "--detach", timeout_s=120)
    assert result.returncode != 0
    assert "--detach needs running services" in result.stderr
    assert "twinbench up" in result.stderr


@pytest.mark.integration
def test_a_command_through_the_gateway_starts_the_services_when_none_answers(tmp_path):
    """`twinbench models` (as `bench training`, `train`, `jobs`, `infer`) against an address where
    nothing answers: the services start for the command, answer it and stop again."""
    result = _twinbench(tmp_path, "models", timeout_s=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting the services" in result.stdout
    assert "no models yet" in result.stdout
    assert "stopped the services it started" in result.stdout


def _services_of(home) -> list[int]:
    """The service processes running with this TWINBENCH_HOME."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:  # not a process, or gone
            continue
        if b"services." in cmdline and f"TWINBENCH_HOME={home}".encode() in environ:
            found.append(int(proc.name))
    return found


@pytest.mark.integration
def test_a_command_stopped_with_sigterm_stops_the_services_it_started(tmp_path):
    """A training command killed as a process manager kills it: the services it started for
    itself stop with it, as they do after Ctrl-C."""
    env = {**os.environ, "TWINBENCH_HOME": str(tmp_path), "TWINBENCH_GATEWAY": _unused_address()}
    command = [sys.executable, "-m", "twinbench.cli", "train", "--framework", "torch",
               "--model", "mlp", "--epochs", "1000"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:  # fmt: skip
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until the job trains: the services are all up then
            seen.append(line)
            if "epoch 1:" in line:
                break
        assert _services_of(tmp_path), "".join(seen)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "stopped the services it started" in rest
    assert _services_of(tmp_path) == []
