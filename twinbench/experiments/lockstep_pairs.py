"""One lockstep process pair: both arms' job workers started here, trained in alternating blocks
of steps with the idle one stopped as a whole process, every block timed inside its worker and
recorded with the parked process's CPU and what else ran (docs/lockstep.md). How pairs become a
verdict, for `bench training --lockstep` and compare, is twinbench.experiments.lockstep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import TwinbenchError
from twinbench.experiments.disturbance import (
    DISTURBANCE_LIMIT,
    Monitor,
    all_threads_stopped,
    context_switches,
    disturbed,
    process_cpu_seconds,
)

FRAMEWORK_CLASSES = {
    "torch": "twinbench.frameworks.torch.framework:TorchFramework",
    "tf": "twinbench.frameworks.tf.framework:TFFramework",
    "jax": "twinbench.frameworks.jax.framework:JaxFramework",
}


# Blocks short enough that drift within a couple of block pairs is small, long enough that the
# resume and the coordinator's own work are a small part of each.
DEFAULT_BLOCK_SECONDS = 0.5


DEFAULT_BLOCK_PAIRS = 10


CALIBRATION_STEPS = 20  # after the warm-up: each arm's steady step time, to size the blocks


MAX_BLOCK_STEPS = 100_000


# Both arms' processes live at once: the second starts only if the memory left holds another
# process as large as the first, with this margin.
MEMORY_MARGIN = 1.5


class LockstepUnavailable(Exception):
    """Both arms cannot run here at once: the caller falls back to sequential jobs."""


class LockstepFailed(TwinbenchError):
    """A worker of a lockstep pair ended before its pair was done."""


@dataclass(frozen=True)
class LockstepOptions:
    block_pairs: int = DEFAULT_BLOCK_PAIRS  # valid block pairs per process pair
    block_seconds: float = DEFAULT_BLOCK_SECONDS  # each block's length, from the calibration
    block_steps: int | None = None  # or a fixed number of steps per block
    calibration_steps: int = CALIBRATION_STEPS
    disturbance_limit: float = DISTURBANCE_LIMIT
    max_discards: int | None = None  # per process pair; None: as many as block_pairs
    # Intra-op threads per arm, first and second (None: the settings' own, the same for both).
    # Only for a positive control: an arm given fewer threads than the other is handicapped.
    arm_threads: tuple[int, int] | None = None


def block_orders(pairs: int, first: int, seed: int) -> list[tuple[int, int]]:
    """Each block pair's order, as arm indices: couples of block pairs, the first of a couple in
    a seeded random order and the second reversed (AB BA or BA AB); the first couple starts with
    arm `first`."""
    rng = np.random.default_rng(seed)
    orders: list[tuple[int, int]] = []
    for couple in range((pairs + 1) // 2):
        a = first if couple == 0 else int(rng.integers(2))
        orders += [(a, 1 - a), (1 - a, a)]
    return orders[:pairs]


def worker_command(framework: str) -> list[str]:
    return [sys.executable, "-m", "twinbench.training.worker", "--framework",
            FRAMEWORK_CLASSES[framework]]  # fmt: skip


def _status_bytes(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ArmProcess:
    """One arm's job worker: started in a process group of its own, so that a stop reaches all
    of it. `command` runs with `--fd` (the job's reports, as to a trainer) and `--lockstep` (the
    block protocol) appended."""

    def __init__(
        self,
        label: str,
        command: list[str],
        job: tpb.Job,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.label = label
        self.job = job
        self.outcome: tuple[str, str] | None = None
        self.peak_rss_bytes = 0
        self._stopping = False
        reports, reports_theirs = socket.socketpair()
        control, control_theirs = socket.socketpair()
        fds = (reports_theirs.fileno(), control_theirs.fileno())
        self._log: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._log = log.open("wb")
        self.log = log
        self.process = subprocess.Popen(
            [*command, "--fd", str(fds[0]), "--lockstep", str(fds[1])],
            pass_fds=fds,
            env=env,
            process_group=0,  # its own group, in our session: a stop reaches all of it, only it
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
        )
        reports_theirs.close()
        control_theirs.close()
        self.reports = Connection(reports.detach())
        self.control = Connection(control.detach())
        try:
            self.reports.send(job.SerializeToString())
        except OSError:
            pass  # it ended already: wait_block says how

    @property
    def pid(self) -> int:
        return self.process.pid

    def go(self, steps: int) -> None:
        """Lets the worker train its next block of `steps` steps (the first: from its start)."""
        try:
            self.control.send(("go", steps))
            os.killpg(self.pid, signal.SIGCONT)
        except OSError:
            pass  # it ended: wait_block says how

    def wait_ready(self) -> None:
        """Waits until the worker has loaded its data and model and parked before its first
        block."""
        self._wait_for("ready")
        self.wait_parked()

    def wait_block(self) -> dict:
        """The worker's report of the block it trained; it parks right after sending it."""
        return self._wait_for("block")

    def _wait_for(self, wanted: str) -> dict:
        while True:
            try:
                if self.control.poll(1.0):
                    kind, body = self.control.recv()
                    if kind == wanted:
                        return body
                    continue
            except (EOFError, OSError):
                pass
            else:
                if self.process.poll() is None:
                    continue
            raise LockstepFailed(self._failure())

    def wait_parked(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all_threads_stopped(self.pid):
            if self.process.poll() is not None:
                raise LockstepFailed(self._failure())
            if time.monotonic() > deadline:
                raise LockstepFailed(f"{self.label}: the worker did not park in {timeout_s:.0f} s")
            time.sleep(0.0002)

    def drain(self) -> None:
        """Applies every report waiting on the socket (record changes, the outcome)."""
        try:
            while self.reports.poll(0):
                message = self.reports.recv()
                if message[0] == "job":
                    self.job = tpb.Job.FromString(message[1])
                elif message[0] == "end":
                    self.outcome = (message[1], message[2])
        except (EOFError, OSError):
            pass

    def stop(self) -> None:
        """Asks the job to end (it stops at its next block's start); finish() waits for it."""
        if self._stopping:
            return
        self._stopping = True
        self.peak_rss_bytes = _status_bytes(self.pid, "VmHWM")
        self.control.send(("stop",))
        os.killpg(self.pid, signal.SIGCONT)

    def finish(self, timeout_s: float = 120.0) -> None:
        """Ends the job and waits for its process."""
        self.stop()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.drain()
        self.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.close()

    def close(self) -> None:
        self.reports.close()
        self.control.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _failure(self) -> str:
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        self.drain()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        said = f": {self.outcome[0]}: {self.outcome[1]}" if self.outcome else ""
        where = f" (log: {self.log})" if self.log else ""
        return (
            f"{self.label}: the worker ended ({how}) before its lockstep pair was done{said}{where}"
        )


BlockHook = Callable[[int, int], None]  # (attempt, position in the pair)


def _block(monitor: Monitor, active: ArmProcess, parked: ArmProcess, steps: int) -> dict:
    """One block: `active` trains `steps` steps while `parked` stays stopped."""
    parked_cpu, parked_switches = process_cpu_seconds(parked.pid), context_switches(parked.pid)
    before = monitor.snapshot()
    active.go(steps)
    block = active.wait_block()
    active.wait_parked()
    after = monitor.snapshot()
    cpu, switches = process_cpu_seconds(parked.pid), context_switches(parked.pid)
    active.drain()  # progress reports: never let them fill the socket
    block["arm"] = active.label
    block["disturbance"] = monitor.between(before, after, active=[active.pid])
    block["parked"] = {
        "arm": parked.label,
        "cpu_s": (cpu or 0.0) - (parked_cpu or 0.0),
        "context_switches": (switches or 0) - (parked_switches or 0),
    }
    return block


def calibrated_steps(calibration: Sequence[dict], block_seconds: float) -> int:
    """Steps per block so that the faster arm's block takes about `block_seconds` (every block
    at least that long, so that the disturbance counters' ticks stay a small part of it), from
    each arm's calibration block (its steady steps, the first after the resume left out)."""
    step_s = min(
        (b["seconds"] - b["first_step_seconds"]) / max(b["steps"] - 1, 1) for b in calibration
    )
    return int(min(MAX_BLOCK_STEPS, max(2, round(block_seconds / max(step_s, 1e-9)))))


def fit_together(previous: dict | None, known_peaks: Sequence[int] = ()) -> bool:
    """Whether a previous process pair's two workers, at their peak, fit in the memory available
    now with the margin: then the next pair may start both processes at once. Before the first
    pair, `known_peaks` may stand in: each arm's peak in a job that trained the same model
    earlier (compare's repeats, which also exported, so they peak no lower)."""
    jobs = (previous or {}).get("jobs") or []
    peaks = [j["peak_rss_bytes"] for j in jobs if j and j.get("peak_rss_bytes")]
    if previous is None:
        peaks = [peak for peak in known_peaks if peak]
    return len(peaks) == 2 and MEMORY_MARGIN * sum(peaks) < available_memory_bytes()


def run_process_pair(
    start: Sequence[Callable[[], ArmProcess]],
    first: int,
    seed: int,
    options: LockstepOptions,
    warmup_steps: int,
    monitor_for: Callable[[list[int]], Monitor] = Monitor,
    before_block: BlockHook | None = None,
    after_block: BlockHook | None = None,
    together: bool = False,
) -> dict:
    """One process pair: starts both arms, at once when `together` (fit_together says when)
    or else one after the other, the second only once the first is warm and known to leave room
    for it; warms each up while the other is parked, calibrates the block length, then runs
    block pairs until `block_pairs` are valid or the discards pass their cap. The workers are
    ended (or killed) before it returns."""
    arms: list[ArmProcess | None] = [None, None]
    out: dict[str, Any] = {
        "seed": seed, "first": first, "warmup": [None, None], "calibration": [None, None],
        "block_steps": options.block_steps, "pairs": [], "discarded": 0, "too_disturbed": False,
        "failed": None, "start_order": [first, 1 - first], "started_together": together,
    }  # fmt: skip
    try:
        if together:  # both load at once; neither trains before both are parked
            for k in (first, 1 - first):
                arms[k] = start[k]()
            for k in (first, 1 - first):
                arm = arms[k]
                assert arm is not None
                arm.wait_ready()
        for k in (first, 1 - first):
            if (started := arms[first]) is not None and arms[k] is None:
                rss = _status_bytes(started.pid, "VmRSS")
                if available_memory_bytes() < MEMORY_MARGIN * rss:
                    raise LockstepUnavailable(
                        f"the second arm would not fit in memory beside the first ({rss >> 20}"
                        f" MiB, {available_memory_bytes() >> 20} MiB available)"
                    )
            arm = arms[k]
            if arm is None:
                arm = arms[k] = start[k]()
                arm.wait_ready()
            arm.go(max(1, warmup_steps))
            out["warmup"][k] = arm.wait_block()
            arm.wait_parked()
        a, b = arms[0], arms[1]
        assert a is not None and b is not None
        a.drain()
        b.drain()
        monitor = monitor_for(list(a.job.cpu_set) or sorted(os.sched_getaffinity(0)))
        for k in (first, 1 - first):
            active, parked = (a, b) if k == 0 else (b, a)
            out["calibration"][k] = _block(monitor, active, parked, options.calibration_steps)
        steps = options.block_steps or calibrated_steps(out["calibration"], options.block_seconds)
        out["block_steps"] = steps
        orders = block_orders(options.block_pairs, first, seed)
        cap = options.block_pairs if options.max_discards is None else options.max_discards
        valid, attempt = 0, 0
        while valid < options.block_pairs:
            order = orders[valid]
            blocks = []
            for position, k in enumerate(order):
                if before_block:
                    before_block(attempt, position)
                active, parked = (a, b) if k == 0 else (b, a)
                blocks.append(_block(monitor, active, parked, steps))
                if after_block:
                    after_block(attempt, position)
            discard = any(disturbed(x["disturbance"], options.disturbance_limit) for x in blocks)
            out["pairs"].append({"attempt": attempt, "index": None if discard else valid,
                                 "order": list(order), "blocks": blocks, "discarded": discard})  # fmt: skip
            attempt += 1
            if discard:
                out["discarded"] += 1
                if out["discarded"] > cap:
                    out["too_disturbed"] = True
                    break
            else:
                valid += 1
        ending = (a, b) if first == 0 else (b, a)
        for done in ending:  # both wind down at once: nothing is timed any more
            done.stop()
        for done in ending:
            done.finish()
    except LockstepFailed as exc:
        out["failed"] = str(exc)
    finally:
        for leftover in arms:
            if leftover is not None:
                leftover.kill()
    out["jobs"] = [_job_summary(arm) if arm else None for arm in arms]
    return out


def _job_summary(arm: ArmProcess) -> dict:
    job = arm.job
    return {
        "job": job.id,
        "arm": arm.label,
        "outcome": arm.outcome[0] if arm.outcome else None,
        "error": arm.outcome[1] if arm.outcome else "",
        "device": job.device,
        "framework_version": job.framework_version,
        "threads": [job.threads.intra_op, job.threads.inter_op],
        "cpu_set": list(job.cpu_set),
        "baseline_rss_bytes": job.baseline_rss_bytes,
        "data_peak_rss_bytes": job.data_peak_rss_bytes,
        "peak_rss_bytes": arm.peak_rss_bytes,
        "precision": job.precision,
        "unit": job.throughput_unit or "samples",
        "compilation": job.fairness.get("compilation", ""),
        "layout": job.fairness.get("layout", ""),
        "log": str(arm.log) if arm.log else None,
    }
