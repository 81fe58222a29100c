"""What else took the CPU while a block was timed: this run's own other processes, everything
else on the machine, and the hypervisor's steal, read from /proc (Linux).

A lockstep block (twinbench.experiments.lockstep) or a load round is bracketed by two snapshots.
Between them, the active process tree's CPU time is the work being timed; the rest of this run's
process tree (the coordinator, the parked arm, services it started) is "ours"; the busy time of
the job's CPUs (/proc/stat) minus both is "other"; and steal is time the hypervisor gave another
guest. Together, as a share of what the job's CPUs could have done in the block's wall time, they
are the block's disturbance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# A block pair is discarded and redone when either block's disturbance (this run's other
# processes, everything else and steal, as a share of the job CPUs' capacity during the block)
# exceeds this. Set in advance, never from the data: 10% of the CPUs is well above what an idle
# machine shows (system daemons and the coordinator itself take under 1%) and well below one
# other busy thread on a 2-CPU job (50%).
DISTURBANCE_LIMIT = 0.10

PROC = Path("/proc")


def clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


TICK_S = 1.0 / clock_ticks()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_cpu_seconds(pid: int, reaped_children: bool = False) -> float | None:
    """utime + stime of the whole process (all its threads), or None when it is gone; with
    `reaped_children`, plus the CPU time of the children it has waited for (cutime + cstime)."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * TICK_S


def context_switches(pid: int) -> int | None:
    """Voluntary and involuntary context switches summed over the process's threads."""
    total, seen = 0, False
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
                    seen = True
        except OSError:
            continue  # a thread that ended
    return total if seen else None


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (T or t): a group stop has completed."""
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        if text[text.rfind(")") + 2] not in "Tt":
            return False
    return bool(tasks)


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            out[int(entry.name)] = int(fields[1])
    return out


def tree(root: int, parent_of: dict[int, int]) -> set[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def cpu_ticks(cpus: Iterable[int] | None = None) -> tuple[float, float]:
    """(busy, steal) seconds since boot, summed over `cpus` (all when None), from /proc/stat.
    Busy: user, nice, system, irq and softirq (guest time is inside user already)."""
    wanted = None if cpus is None else {f"cpu{c}" for c in cpus}
    busy = steal = 0
    try:
        lines = (PROC / "stat").read_text().splitlines()
    except OSError:
        return 0.0, 0.0
    for line in lines:
        if not line.startswith("cpu"):
            continue
        name, *values = line.split()
        if (wanted is None and name != "cpu") or (wanted is not None and name not in wanted):
            continue
        v = [int(x) for x in values] + [0] * 8
        busy += v[0] + v[1] + v[2] + v[5] + v[6]
        steal += v[7]
    return busy * TICK_S, steal * TICK_S


@dataclass
class Snapshot:
    wall: float
    busy: float
    steal: float
    # This run's processes: CPU seconds, each with the children it has reaped (see snapshot).
    cpu: dict[int, float] = field(default_factory=dict)


class Monitor:
    """Snapshots around timed blocks, and what else ran between two of them.

    `cpus`: the CPUs the timed work may run on (a job's CPU set); `root`: the process whose tree
    is this run (the coordinator, by default this process)."""

    def __init__(self, cpus: Iterable[int] | None = None, root: int | None = None) -> None:
        self.cpus = sorted(cpus) if cpus is not None else sorted(os.sched_getaffinity(0))
        self.root = os.getpid() if root is None else root

    def snapshot(self) -> Snapshot:
        """The counters now. A process of ours counts the children it has reaped: one that
        starts and ends between two snapshots (a load round's load generator) is in neither, and
        its CPU time shows only in its parent's; without them it would read as someone else's."""
        busy, steal = cpu_ticks(self.cpus)
        ours = tree(self.root, parents())
        cpu = {
            p: s for p in ours if (s := process_cpu_seconds(p, reaped_children=True)) is not None
        }
        return Snapshot(time.perf_counter(), busy, steal, cpu)

    def between(self, before: Snapshot, after: Snapshot, active: Iterable[int] = ()) -> dict:
        """What ran between two snapshots: `active` (pids whose trees are the timed work),
        this run's other processes, everything else on the job's CPUs, and steal; all in CPU
        seconds, and `fraction`: the three disturbances over the CPUs' capacity in that time."""
        parent_of = parents()
        working: set[int] = set()
        for pid in active:
            working |= tree(pid, parent_of)

        def used(pids: Iterable[int]) -> float:
            return sum(max(0.0, after.cpu[p] - before.cpu.get(p, 0.0)) for p in pids)

        active_s = used(p for p in after.cpu if p in working)
        # A process of ours that ended in between moved all its time into its parent's reaped
        # children, the part before the first snapshot too, which that snapshot held already.
        gone_s = sum(s for p, s in before.cpu.items() if p not in after.cpu)
        ours_s = max(0.0, used(p for p in after.cpu if p not in working) - gone_s)
        wall = max(after.wall - before.wall, 1e-9)
        busy = after.busy - before.busy
        steal = max(0.0, after.steal - before.steal)
        # Ours may have run outside the job's CPUs: then "other" is underestimated by as much.
        other = max(0.0, busy - active_s - ours_s)
        capacity = wall * len(self.cpus)
        # The counters move in clock ticks: each CPU's busy time and each process's CPU time can
        # be off by a tick at either end, whatever the block's length.
        resolution = TICK_S * (len(self.cpus) + 2)
        return {
            "seconds": wall,
            "active_cpu_s": active_s,
            "ours_cpu_s": ours_s,
            "other_cpu_s": other,
            "steal_s": steal,
            "fraction": (ours_s + other + steal) / capacity,
            # Other processes and steal only, for load rounds where all of ours is the work.
            "outside_fraction": (other + steal) / capacity,
            "resolution_fraction": resolution / capacity,
        }


def disturbed(record: dict, limit: float = DISTURBANCE_LIMIT) -> bool:
    """Whether a block's disturbance is over `limit`, beyond what the counters' ticks can tell
    apart (a block of a few ticks cannot be judged finely: it is measured, not guessed)."""
    return record["fraction"] - record.get("resolution_fraction", 0.0) > limit
