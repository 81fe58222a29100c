"""Before a comparison or a bench: what on this machine makes timings noisy, checked, recorded and
warned about (compare, bench training and bench serving all run it).

Each check is one record: what was read, whether it is fine for timing, and a note. None of them
stops a run (a shared machine is still a machine people measure on); they make the report say
under what conditions its figures were taken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from twinbench.experiments.disturbance import TICK_S, parents, tree

# Thresholds, stated in advance.
LOAD_PER_CPU_LIMIT = 0.5  # the 1-minute load average per usable CPU above which runs queue
BUSY_PROCESS_SHARE = 0.10  # a process busier than 10% of one CPU while sampled is "busy"
SAMPLE_S = 0.5  # how long busy processes are sampled
GPU_BUSY_PERCENT = 5  # GPU utilisation above which the GPU counts as busy
GPU_TIMEOUT_S = 10.0


def _check(name: str, value: object, ok: bool, note: str = "") -> dict:
    return {"check": name, "value": value, "ok": ok, "note": note}


def load_average(cpus: int) -> dict:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return _check("load average", None, True, "not available here")
    ok = one <= LOAD_PER_CPU_LIMIT * cpus
    note = "" if ok else f"{one:.2f} runnable on {cpus} CPUs: other work competes for them"
    return _check("load average", [round(one, 2), round(five, 2)], ok, note)


def _cpu_by_process(root: Path) -> dict[int, tuple[str, float]]:
    out = {}
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 2 :].split()
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) * TICK_S)
    return out


def busy_processes(
    ignore: Iterable[int] | None = None, sample_s: float = SAMPLE_S, proc: Path = Path("/proc")
) -> dict:
    """Processes that used more than BUSY_PROCESS_SHARE of a CPU over `sample_s`, other than
    `ignore` (by default this process and its descendants: the run itself)."""
    if not proc.is_dir():
        return _check("busy processes", None, True, "no /proc here")
    skip = set(tree(os.getpid(), parents()) if ignore is None else ignore)
    before = _cpu_by_process(proc)
    start = time.perf_counter()
    time.sleep(sample_s)
    after = _cpu_by_process(proc)
    elapsed = time.perf_counter() - start
    busy: list[dict[str, Any]] = []
    for pid, (name, cpu) in after.items():
        if pid in skip or pid not in before:
            continue
        share = (cpu - before[pid][1]) / elapsed
        if share > BUSY_PROCESS_SHARE:
            busy.append({"pid": pid, "name": name, "cpu_share": round(share, 2)})
    busy.sort(key=lambda b: -b["cpu_share"])
    note = ", ".join(f"{b['name']} ({b['pid']}) {b['cpu_share']:.0%}" for b in busy[:5])
    return _check("busy processes", busy, not busy, note and f"using the CPU now: {note}")


def frequency_governors(cpus: Iterable[int], sys_root: Path = Path("/sys")) -> dict:
    """CPU frequency scaling: a governor other than "performance" changes the clock under a
    run; where cpufreq is not exposed (most VMs and containers) it cannot be told."""
    found = {}
    for cpu in cpus:
        path = sys_root / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        try:
            found[cpu] = path.read_text().strip()
        except OSError:
            continue
    if not found:
        return _check("CPU frequency governor", None, True,
                      "not exposed here (a VM or container): frequency scaling cannot be told")  # fmt: skip
    names = sorted(set(found.values()))
    ok = names == ["performance"]
    note = "" if ok else f"{', '.join(names)}: the clock may change during the run"
    return _check("CPU frequency governor", names, ok, note)


def cgroup_quota(cpus: int, sys_root: Path = Path("/sys"), proc: Path = Path("/proc")) -> dict:
    """The CPU quota of this process's cgroup (v2 cpu.max, or v1 cfs_quota_us): fewer CPUs'
    worth of time than the CPUs a job uses means throttling within every period."""
    candidates = []
    try:
        for line in (proc / "self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # cgroup v2
                candidates.append(("v2", sys_root / "fs/cgroup" / path.lstrip("/")))
            elif "cpu" in controllers.split(","):
                base = sys_root / "fs/cgroup" / controllers
                candidates.append(("v1", base / path.lstrip("/")))
                candidates.append(("v1", sys_root / "fs/cgroup/cpu" / path.lstrip("/")))
    except (OSError, ValueError):
        pass
    candidates += [("v2", sys_root / "fs/cgroup"), ("v1", sys_root / "fs/cgroup/cpu")]
    for version, folder in candidates:
        quota = _quota(version, folder)
        if quota is None:
            continue
        if isinstance(quota, str):  # "max": no quota
            return _check("cgroup CPU quota", "none", True, f"{folder}")
        ok = quota >= cpus
        note = "" if ok else (f"{quota:g} CPUs' worth of time for {cpus} CPUs: the run is"
                              " throttled in every period")  # fmt: skip
        return _check("cgroup CPU quota", round(quota, 3), ok, note)
    return _check("cgroup CPU quota", None, True, "no CPU controller found")


def _quota(version: str, folder: Path) -> float | str | None:
    try:
        if version == "v2":
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return "max" if quota == "max" else int(quota) / int(period)
        quota = (folder / "cpu.cfs_quota_us").read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
        return "max" if int(quota) < 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


Runner = Callable[[list[str]], str]


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, timeout=GPU_TIMEOUT_S,
                          check=True).stdout  # fmt: skip


def gpu_busy(run: Runner = _run, ignore: Iterable[int] | None = None) -> dict:
    """Whether a GPU is in use by someone else, from nvidia-smi (absent: no check)."""
    if shutil.which("nvidia-smi") is None:
        return _check("GPU", None, True, "no nvidia-smi: no NVIDIA GPU to check")
    skip = set(tree(os.getpid(), parents()) if ignore is None else ignore)
    try:
        gpus = [line.split(", ") for line in run(
            ["nvidia-smi", "--query-gpu=index,name,utilization.gpu,memory.used",
             "--format=csv,noheader,nounits"]).strip().splitlines() if line]  # fmt: skip
        apps = [line.split(", ") for line in run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
             "--format=csv,noheader,nounits"]).strip().splitlines() if line]  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return _check("GPU", None, True, f"nvidia-smi did not answer: {exc}")
    value: list[dict[str, Any]] = [{"index": int(g[0]), "name": g[1], "utilization": _int(g[2]),
              "memory_used_mib": _int(g[3])} for g in gpus if len(g) >= 4]  # fmt: skip
    others = [{"pid": _int(a[0]), "name": a[1], "memory_mib": _int(a[2])}
              for a in apps if len(a) >= 3 and _int(a[0]) not in skip]  # fmt: skip
    busy = [g for g in value if g["utilization"] > GPU_BUSY_PERCENT]
    ok = not busy and not others
    notes = [f"GPU {g['index']} {g['utilization']}% busy" for g in busy]
    notes += [f"{a['name']} ({a['pid']}) holds {a['memory_mib']} MiB" for a in others]
    return _check("GPU", {"gpus": value, "processes": others}, ok, "; ".join(notes))


def _int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


def preflight(
    cpus: Iterable[int] | None = None,
    ignore: Iterable[int] | None = None,
    sample_s: float = SAMPLE_S,
    gpu: Callable[[], dict] | None = None,
) -> dict:
    """Every check, on the CPUs a run will use (by default those this process may use)."""
    chosen = sorted(cpus) if cpus is not None else sorted(os.sched_getaffinity(0))
    checks = [
        load_average(len(chosen)),
        busy_processes(ignore, sample_s),
        frequency_governors(chosen),
        cgroup_quota(len(chosen)),
        gpu() if gpu else gpu_busy(ignore=ignore),
    ]
    warnings = [f"{c['check']}: {c['note']}" for c in checks if not c["ok"]]
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": chosen,
        "checks": checks,
        "warnings": warnings,
        "quiet": not warnings,
    }


def summary(record: dict) -> str:
    """One line for a report: "quiet", or what was found."""
    if record["quiet"]:
        return "quiet (load, busy processes, frequency governor, CPU quota, GPU)"
    return "; ".join(record["warnings"])


def warn(record: dict, stream: IO[str] | None = None) -> None:
    """The warnings on the console (stderr), before the run starts."""
    stream = stream or sys.stderr
    for warning in record["warnings"]:
        print(f"preflight: {warning}", file=stream)
    if record["warnings"]:
        print("preflight: figures taken now may be noisy; the report says so", file=stream)
