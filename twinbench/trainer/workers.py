"""The trainer's side of a job's worker process: starts `python -m twinbench.training.worker` for
the job and relays what it reports (the protocol is in twinbench.training.worker).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from multiprocessing.connection import Connection

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import Settings
from twinbench.errors import InvalidArgument, JobCancelled, TwinbenchError
from twinbench.trainer.queue import ServiceJobContext

log = logging.getLogger(__name__)

POLL_S = 0.2


def run_in_worker(
    framework_path: str, job: tpb.Job, ctx: ServiceJobContext, settings: Settings
) -> None:
    """Runs `job` in a new worker process and relays what it reports into `ctx`.

    Returns when the job succeeded; raises JobCancelled or a TwinbenchError as the job's own run
    would have, so the job manager records the outcome the same way.
    """
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "twinbench.training.worker", "--framework", framework_path,
         "--fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        env=env,
    )  # fmt: skip
    theirs.close()
    conn = Connection(ours.detach())
    cancel_sent = False
    try:
        conn.send(job.SerializeToString())
        while True:
            if ctx.cancel_requested.is_set() and not cancel_sent:
                conn.send(("cancel", ctx.shutting_down))
                cancel_sent = True
            try:
                if not conn.poll(POLL_S):
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                raise TwinbenchError(_died(process)) from None
            outcome = relay_message(message, ctx)
            if outcome is not None:
                raise_outcome(*outcome)
                return
    finally:
        conn.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def relay_message(message: tuple, ctx: ServiceJobContext) -> tuple[str, str] | None:
    """Applies one report of a job's process to `ctx`; returns (outcome, message) at its end."""
    kind = message[0]
    if kind == "job":
        record = tpb.Job.FromString(message[1])
        ctx.update(partial(_merge, reported=record))
    elif kind == "epoch":
        ctx.epoch_done(tpb.EpochMetrics.FromString(message[1]))
    elif kind == "progress":
        ctx.progress(*message[1:])
    elif kind == "end":
        return message[1], message[2]
    return None


def _merge(live: tpb.Job, reported: tpb.Job) -> None:
    """The worker's record, keeping the fields only the service changes."""
    state, error = live.state, live.error
    live.CopyFrom(reported)
    live.state, live.error = state, error


def raise_outcome(outcome: str, message: str) -> None:
    if outcome == "ok":
        return
    if outcome == "cancelled":
        raise JobCancelled()
    if outcome == "invalid":
        raise InvalidArgument(message)
    raise TwinbenchError(message)  # "failed" or "crashed": the message says which error it was


def _died(process: subprocess.Popen) -> str:
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return f"the job's training process ended ({how}) before the job finished"
