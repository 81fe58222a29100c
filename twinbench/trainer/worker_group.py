"""The trainer's side of a data-parallel job: starts its worker processes as one group, relays
rank 0's reports into the job, and stops the whole group when one worker dies or the job ends.

The workers' side (who each worker is, its shard of a batch) is twinbench.training.parallel.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import Settings
from twinbench.errors import JobCancelled, TwinbenchError
from twinbench.jobs.request import devices_of, workers_of
from twinbench.trainer.queue import ServiceJobContext
from twinbench.trainer.workers import raise_outcome, relay_message
from twinbench.training.parallel import JOB_FILE_ENV, REPORT_ADDRESS_ENV, REPORT_KEY_ENV

log = logging.getLogger(__name__)

POLL_S = 0.2
# After rank 0 reported a failure, how long to look for the worker whose death caused it.
DEATH_GRACE_S = 3.0
# After rank 0 reported success, how long the other workers may take to leave the final barrier.
EXIT_GRACE_S = 60.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _launch_commands(
    framework_path: str, spec: tpb.JobSpec, base_env: dict[str, str]
) -> list[tuple[list[str], dict[str, str]]]:
    """The processes to start: one torchrun for PyTorch, one process per worker for TensorFlow."""
    workers, devices = workers_of(spec), devices_of(spec)
    worker = ["-m", "twinbench.training.worker", "--framework", framework_path]
    if framework_path.startswith("twinbench.frameworks.torch"):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nnodes", "1", "--nproc-per-node", str(workers * devices),
                   "--max-restarts", "0", "--monitor-interval", "0.5", "-m",
                   "twinbench.training.worker", "--framework", framework_path]  # fmt: skip
        return [(command, dict(base_env))]
    ports = _free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = []
    for index in range(workers):
        env = dict(base_env)
        env.update(RANK=str(index), WORLD_SIZE=str(workers), LOCAL_RANK=str(index),
                   LOCAL_WORLD_SIZE=str(workers))  # fmt: skip
        if workers > 1:
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env["TF_CONFIG"] = json.dumps(config)
        if devices > 1 and spec.device != "cpu":
            first = index * devices
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + d) for d in range(devices))
        out.append(([sys.executable, *worker], env))
    return out


def run_distributed(
    framework_path: str, job: tpb.Job, ctx: ServiceJobContext, settings: Settings
) -> None:
    """Runs a data-parallel job's workers on loopback and relays rank 0's reports into `ctx`.

    Returns when the job succeeded; raises as `twinbench.training.worker.run_in_worker` does. A worker
    that dies ends the job FAILED, naming the worker, and the others are stopped with it: none is
    left waiting in a collective for a peer that is gone.
    """
    rundir = settings.home / "distributed" / job.id
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    job_file = rundir / "job.pb"
    job_file.write_bytes(job.SerializeToString())
    key = secrets.token_bytes(32)
    listener = Listener(("127.0.0.1", 0), authkey=key)
    host, port = listener.address
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", REPORT_ADDRESS_ENV: f"{host}:{port}",
                REPORT_KEY_ENV: key.hex(), "TWINBENCH_DISTRIBUTED_DIR": str(rundir),
                JOB_FILE_ENV: str(job_file)})  # fmt: skip
    accepted: queue.Queue[Connection | BaseException] = queue.Queue()

    def accept() -> None:
        try:
            accepted.put(listener.accept())
        except BaseException as exc:  # noqa: BLE001 - the listener closed, or a bad handshake
            accepted.put(exc)

    threading.Thread(target=accept, name=f"{job.id}-accept", daemon=True).start()
    group = WorkerGroup(_launch_commands(framework_path, job.spec, env), rundir)
    conn: Connection | None = None
    cancel_sent = False
    try:
        while True:
            if ctx.cancel_requested.is_set() and not cancel_sent:
                cancel_sent = True
                if conn is None:
                    raise JobCancelled()
                conn.send(("cancel", ctx.shutting_down))
            if conn is None:
                try:
                    got = accepted.get(timeout=POLL_S)
                except queue.Empty:
                    got = None
                if isinstance(got, BaseException):
                    raise TwinbenchError(f"rank 0 of the job could not report: {got}")
                if got is not None:
                    conn = got
                    conn.send(job.SerializeToString())
            dead = group.first_dead()
            if dead:
                raise TwinbenchError(dead)
            if conn is None:
                continue
            try:
                if not conn.poll(POLL_S):
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                raise TwinbenchError(
                    group.wait_for_death(DEATH_GRACE_S, symptom=0) or "rank 0 stopped reporting"
                ) from None
            outcome = relay_message(message, ctx)
            if outcome is None:
                continue
            kind, text = outcome
            if kind == "ok":
                group.wait_all(EXIT_GRACE_S)
            elif kind not in ("cancelled", "invalid"):
                # A worker's death shows in rank 0 as a collective's error: name the cause.
                dead = group.wait_for_death(DEATH_GRACE_S, symptom=0)
                if dead:
                    raise TwinbenchError(f"{dead}; rank 0 reported: {text}")
            raise_outcome(kind, text)
            return
    finally:
        listener.close()
        if conn is not None:
            conn.close()
        group.stop()
        shutil.rmtree(rundir, ignore_errors=True)


class WorkerGroup:
    """A job's worker processes, in one process group so that stopping them stops their children
    (torchrun's workers) too. Each worker writes rank-<r>.pid into `rundir` as it starts, which is
    how a worker under torchrun is watched (and how a test finds one to kill)."""

    def __init__(self, commands: list[tuple[list[str], dict[str, str]]], rundir: Path) -> None:
        self.rundir = rundir
        self.world = 0
        self.procs: list[subprocess.Popen] = []
        for command, env in commands:
            # The first opens a process group of its own (in this session), the others join it.
            group = self.procs[0].pid if self.procs else 0
            self.procs.append(subprocess.Popen(command, env=env, process_group=group))
        self._pids: dict[int, int] = {}

    def _known_pids(self) -> dict[int, int]:
        for path in self.rundir.glob("rank-*.pid"):
            rank = int(path.stem.split("-")[1])
            if rank not in self._pids:
                try:
                    self._pids[rank] = int(path.read_text())
                except ValueError:
                    continue  # being written
        return self._pids

    def _done(self, rank: int) -> bool:
        return (self.rundir / f"rank-{rank}.done").exists()

    def dead_workers(self) -> list[tuple[int | None, str]]:
        """(rank, why) of each worker that ended before its end (each writes rank-<r>.done as it
        leaves normally); the rank is None for torchrun itself."""
        dead: list[tuple[int | None, str]] = []
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None and (code != 0 or not self._done(index)):
                if len(self.procs) == 1 and code == 0:
                    continue  # its workers all left normally: rank 0's end is on its way
                what = "torchrun" if len(self.procs) == 1 else f"worker rank {index}"
                rank = None if len(self.procs) == 1 else index
                dead.append(
                    (rank, f"{what} (pid {proc.pid}) ended ({_how(code)}) before the job finished")
                )
        for rank, pid in sorted(self._known_pids().items()):
            if not _running(pid) and not self._done(rank):
                dead.append((rank, f"worker rank {rank} (pid {pid}) ended before the job finished"))
        return dead

    def first_dead(self, symptom: int | None = None) -> str | None:
        """Why the job cannot go on, or None while all run. `symptom`: a rank known to have
        failed because of another (rank 0 reporting a collective's error): another dead rank is
        named as the cause. Otherwise, when several have died by the time anyone looks, all are
        named: which died first cannot be told from here."""
        dead = self.dead_workers()
        if not dead:
            return None
        if symptom is not None:
            causes = [why for rank, why in dead if rank is not None and rank != symptom]
            if causes:
                return causes[0]
        whys = list(dict.fromkeys(why for _, why in dead))
        return "; ".join(whys)

    def wait_for_death(self, grace_s: float, symptom: int | None = None) -> str | None:
        deadline = time.monotonic() + grace_s
        while True:
            dead = self.first_dead(symptom)
            if dead or time.monotonic() >= deadline:
                return dead
            time.sleep(POLL_S)  # polling processes that signal nothing else

    def wait_all(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("a worker of a finished job did not exit; stopping it")
                return

    def stop(self) -> None:
        """Stops every worker still running (SIGTERM, then SIGKILL) and reaps them."""
        if not self.procs:
            return
        leader = self.procs[0].pid
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 30.0)):
            if all(p.poll() is not None for p in self.procs) and not self._group_alive(leader):
                break
            try:
                os.killpg(leader, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait_s
            for proc in self.procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def _running(pid: int) -> bool:
    """Alive and not a zombie (torchrun reaps its workers, so a zombie is a death seen early)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _how(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
