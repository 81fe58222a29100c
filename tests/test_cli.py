"""The `twinbench` command as a user runs it: a command that needs the services starts them when
none answers, and one that cannot work that way says so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

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
