"""A stand-in for the job worker in the lockstep tests: the real block protocol (LockstepPacer)
around steps of plain CPU work, without a framework, so that the coordinator can be tested in
seconds. With --spinning-thread it also keeps a helper thread busy outside the GIL all the time,
like a framework's thread pool that spin-waits: parking must stop it too."""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import time
from multiprocessing.connection import Connection

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import JobCancelled
from twinbench.training.lockstep import pacer_for


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_outside_the_gil() -> None:
    data = b"x" * (1 << 20)
    while True:
        hashlib.sha256(data).digest()  # hashing over 2 KiB releases the GIL


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--lockstep", type=int, required=True)
    parser.add_argument("--step-ms", type=float, default=2.0)
    parser.add_argument("--spinning-thread", action="store_true")
    args = parser.parse_args()
    conn = Connection(args.fd)
    job = tpb.Job.FromString(conn.recv())
    job.cpu_set[:] = sorted(os.sched_getaffinity(0))  # as a worker records its CPU set
    conn.send(("job", job.SerializeToString()))
    pacer = pacer_for(args.lockstep)
    if args.spinning_thread:
        threading.Thread(target=spin_outside_the_gil, daemon=True).start()
    try:
        pacer.ready()
        pending, start = 0, time.perf_counter()
        while True:
            spin(args.step_ms / 1000)
            pending += 1
            if pacer.edge_after(pending):
                pacer.add(time.perf_counter() - start, 16 * pending, pending)
                pending, start = 0, time.perf_counter()
    except JobCancelled:
        conn.send(("end", "cancelled", ""))


if __name__ == "__main__":
    main()
