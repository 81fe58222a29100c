"""Helpers the test modules share."""

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from twinbench.config import FRONT_PROGRAM
from twinbench.experiments.disturbance import process_cpu_seconds

T = TypeVar("T")


def until(
    condition: Callable[[], T],
    what: str,
    timeout_s: float,
    poll_s: float = 0.05,
    on_timeout: Callable[[], str] = lambda: "",
) -> T:
    """Polls `condition` until it returns something true, and returns that; past the deadline,
    fails naming `what` (what was awaited) with `on_timeout()`'s text, e.g. a log, below it.

    It fails with an AssertionError, not pytest.fail: some tests wait inside the code under test
    (a link call of the batcher, which hands an Exception on to its callers), and pytest.fail's
    BaseException would escape that handling.
    """
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        if time.monotonic() >= deadline:
            context = on_timeout()
            raise AssertionError(
                f"timed out after {timeout_s:.4g} s waiting for {what}"
                + (f"\n{context}" if context else "")
            )
        time.sleep(poll_s)
    return found


def in_process_logits(home, export, batch):
    """The export file run in this process by its own framework, not by the services."""
    path = home / "model_repository" / export.path
    if export.format == "onnx":
        import onnxruntime as ort

        return ort.InferenceSession(str(path)).run(None, {"input": batch})[0]
    if export.format == "torchscript":
        import torch

        return torch.jit.load(str(path)).eval()(torch.from_numpy(batch)).detach().numpy()
    import tensorflow as tf

    return (
        tf.saved_model.load(str(path)).signatures["serving_default"](input=batch)["logits"].numpy()
    )


def front_pid(stack) -> int | None:
    """The pid of the gateway's front: a child of the gateway's process."""
    gateway = stack.procs["gateway"].pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            comm = stat.with_name("comm").read_text().strip()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == gateway and comm == FRONT_PROGRAM[:15]:  # comm is cut at 15
            return int(stat.parent.name)
    return None


def spinning(process, cpu_s: float = 0.05, timeout_s: float = 30) -> None:
    """Waits until a busy-loop process has used `cpu_s` of CPU: it is running, not starting."""
    until(
        lambda: (process_cpu_seconds(process.pid) or 0.0) >= cpu_s,
        f"process {process.pid} to spin",
        timeout_s,
    )


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fails what runs inside with TimeoutError past `seconds`: a simulation that hangs ends, and
    says so, instead of holding the suite (SIGALRM: the main thread only)."""

    def stop(signum, frame):
        raise TimeoutError(f"ran past its cap of {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
