"""The job worker's side of a lockstep pair: it trains in blocks of steps, reports each block and
stops its whole process until the coordinator (twinbench.experiments.lockstep) resumes it.

Two arms' workers live side by side on one host, but only one runs at a time: a block ends at a
step boundary, with the device synchronised (the loop reads the steps' losses there), the worker
reports the block's time and samples, then stops its process group with SIGSTOP, which freezes
every thread of the process (the framework's intra- and inter-op pools, tf.data's threads) and
any child it started. The coordinator resumes it with SIGCONT when its next block is due. A block
is timed inside the worker with perf_counter, over the training steps only, so the time it spent
parked never counts; the first step after a resume is timed apart, so its cost can be told.

The control connection (a socket inherited as `--lockstep FD`):

    coordinator -> worker  ("go", steps)       the next block's length in steps
                           ("stop",)           end the job now (it ends as cancelled)
    worker -> coordinator  ("ready", {})       loaded and built, sent just before it parks
                           ("block", {...})    a block's figures, sent just before it parks

Parking once loaded lets the coordinator start both arms' processes at once (their imports and
model builds overlap) and still warm each up alone.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection

from twinbench.errors import JobCancelled


class Pacer:
    """The training loop's hook for lockstep: this one never ends a segment nor parks (a job
    trained on its own)."""

    parked_seconds = 0.0  # the time this process spent parked so far

    def ready(self) -> None:
        """Called once the data and the model are loaded, before the first step."""

    def edge_after(self, steps: int) -> bool:
        """Whether `steps` more steps end a block, or the first step of one: a segment must end
        there."""
        return False

    def add(self, seconds: float, samples: int, steps: int) -> None:
        """A timed segment of `steps` steps (StepTimer.add's), ending at or before edge_after's."""


class LockstepPacer(Pacer):
    """Blocks of steps, each reported over `conn` and followed by a park (see the module)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.parked_seconds = 0.0
        self._block_steps: int | None = None  # the current block's length; None: ask first
        self._index = 0
        self._reset()

    def _reset(self) -> None:
        self._steps = self._samples = 0
        self._seconds = 0.0
        self._first: tuple[float, int] | None = None  # (seconds, samples) of the first step
        self._cpu_start = time.process_time()

    def _next_block(self) -> None:
        message = self._conn.recv()
        if message[0] == "stop":
            raise JobCancelled()
        if message[0] != "go" or int(message[1]) < 1:
            raise ValueError(f"lockstep: unexpected control message {message!r}")
        self._block_steps = int(message[1])

    def ready(self) -> None:
        """Says so and parks until the first block is due: the coordinator may start both arms'
        processes at once and still warm each up alone."""
        self._conn.send(("ready", {}))
        parked = time.perf_counter()
        park()
        self._next_block()  # sent before the resume: it is waiting
        self.parked_seconds += time.perf_counter() - parked

    def edge_after(self, steps: int) -> bool:
        assert self._block_steps is not None, "ready() comes before the first step"
        done = self._steps + steps
        return done >= self._block_steps or (self._steps == 0 and steps == 1)

    def add(self, seconds: float, samples: int, steps: int) -> None:
        if self._steps == 0 and steps == 1:
            self._first = (seconds, samples)
        self._steps += steps
        self._samples += samples
        self._seconds += seconds
        if self._block_steps is not None and self._steps >= self._block_steps:
            self._report_and_park()

    def _report_and_park(self) -> None:
        first_seconds, first_samples = self._first or (0.0, 0)
        block = {
            "index": self._index,
            "steps": self._steps,
            "samples": self._samples,
            "seconds": self._seconds,
            "first_step_seconds": first_seconds,
            "first_step_samples": first_samples,
            # All of this process's threads, from the block's first step to its last.
            "cpu_seconds": time.process_time() - self._cpu_start,
        }
        self._index += 1
        self._conn.send(("block", block))
        parked = time.perf_counter()
        park()
        self._next_block()  # sent before the resume: it is waiting
        self.parked_seconds += time.perf_counter() - parked
        self._reset()


def park() -> None:
    """Stops this whole process (and, as a group leader, its group) until a SIGCONT. A signal a
    process sends itself is delivered before kill() returns, so this returns after the resume."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGSTOP)
    else:  # not a group leader: never stop the group of whoever started us
        os.kill(os.getpid(), signal.SIGSTOP)


def pacer_for(fd: int | None) -> Pacer:
    """The worker's pacer: lockstep over the inherited socket `fd`, or none."""
    if fd is None:
        return Pacer()
    from twinbench.training.parallel import die_with_parent

    # A parked worker cannot notice that its coordinator died: the kernel ends it instead.
    die_with_parent()
    return LockstepPacer(Connection(fd))
