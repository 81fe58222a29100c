"""What a job's run records about its machine: its process's peak memory, and which other jobs
trained beside it (its figures then share the machine with theirs).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from pathlib import Path

# Largest |reloaded export - in-memory model| accepted on a test batch of logits.
EXPORT_TOLERANCE = 1e-4
EXPORT_CHECK_ROWS = 64
# Steps timed apart at the start of a job. Measured on 2 CPU cores with LeNet-5 at batch 32, the
# first step carries TensorFlow's tracing (seconds) and PyTorch's first allocations (2 to 5 times
# a steady step); from the second step both run at their steady pace, within the machine's noise.
# 10 leaves a margin for allocator growth and for autotuning on a GPU.
DEFAULT_WARMUP_STEPS = 10
# Steady steps are also timed in this many windows, for the spread of speed within one job.
STEADY_WINDOWS = 10


class ActiveJobs:
    """Markers of running training jobs in a folder both trainers share, so that a job can record
    whether another trained beside it (its figures then share the machine with that job's)."""

    # A marker from another host (a container) cannot be checked by its pid: it counts as long as
    # it was touched this recently (a training job touches its own about once a second; evaluation
    # and exports pause that for seconds, not minutes).
    STALE_S = 120.0

    def __init__(self, folder: Path, job_id: str) -> None:
        self.folder = folder
        self.job_id = job_id
        self.marker = folder / f"{job_id}.json"
        self.seen: set[str] = set()
        self._last_check = 0.0

    def __enter__(self) -> ActiveJobs:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        tmp.replace(self.marker)
        self.check()
        return self

    def __exit__(self, *exc) -> None:
        self.check()
        self.marker.unlink(missing_ok=True)

    def check(self, every_s: float = 0.0) -> None:
        """Adds every other live marker to `seen`; at most once per `every_s` seconds."""
        now = time.monotonic()
        if now - self._last_check < every_s:
            return
        self._last_check = now
        os.utime(self.marker)
        for path in self.folder.glob("*.json"):
            if path != self.marker and path.stem not in self.seen and _alive(path):
                self.seen.add(path.stem)


def _alive(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text())
        if owner["host"] == socket.gethostname():
            os.kill(owner["pid"], 0)
            return True
        return time.time() - marker.stat().st_mtime < ActiveJobs.STALE_S
    except (OSError, ValueError, KeyError, TypeError):
        return False  # gone, half-written or its process has exited


class PeakRss:
    """The largest resident set size of this process while a job runs, sampled in the background."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class NoMarker:
    """The ActiveJobs of a worker other than rank 0: it sees and leaves nothing."""

    seen: set[str] = set()

    def __enter__(self) -> NoMarker:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def check(self, every_s: float = 0.0) -> None:
        pass


def pin_process(cpus: list[int]) -> None:
    """Confines every thread of this process to `cpus`. sched_setaffinity(0) sets the calling
    thread's alone, and threads started before it (OpenBLAS's pool, started when numpy loads)
    would keep running on every CPU; threads started later inherit their creator's set."""
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, FileNotFoundError):
            pass  # the thread ended meanwhile


def process_cpus() -> list[int]:
    """Every CPU some thread of this process may run on, as the OS reports it now."""
    allowed: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            allowed |= os.sched_getaffinity(int(task.name))
        except (ProcessLookupError, FileNotFoundError):
            pass
    return sorted(allowed)
