"""Preflight: each check reads what makes timings noisy, warns when it finds it, and the record
says so; the machine's files are replaced by small fakes where a test needs a known answer."""

from __future__ import annotations

import io
import subprocess
import sys

from tests_support import spinning
from twinbench.experiments import preflight as pf


def test_the_record_holds_every_check_and_its_warnings():
    record = pf.preflight(sample_s=0.1)
    names = [c["check"] for c in record["checks"]]
    assert names == ["load average", "busy processes", "CPU frequency governor",
                     "cgroup CPU quota", "GPU"]  # fmt: skip
    assert all(set(c) == {"check", "value", "ok", "note"} for c in record["checks"])
    failed = [c for c in record["checks"] if not c["ok"]]
    assert len(record["warnings"]) == len(failed)
    assert record["quiet"] == (not failed)
    assert pf.summary(record)
    stream = io.StringIO()
    pf.warn(record, stream)
    assert stream.getvalue().count("preflight:") == len(failed) + (1 if failed else 0)


def test_a_busy_process_is_found_unless_it_is_ours():
    busy = subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"])
    try:
        spinning(busy)
        found = pf.busy_processes(ignore=set(), sample_s=0.5)
        assert busy.pid in [b["pid"] for b in found["value"]]
        assert not found["ok"] and str(busy.pid) in found["note"]
        # By default the run's own processes (this one and its children) are not "others".
        ours = pf.busy_processes(sample_s=0.5)
        assert busy.pid not in [b["pid"] for b in ours["value"]]
    finally:
        busy.kill()
        busy.wait()


def test_load_average_above_half_a_process_per_cpu_warns(monkeypatch):
    monkeypatch.setattr(pf.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    assert not pf.load_average(2)["ok"]
    assert pf.load_average(8)["ok"]


def test_frequency_governors(tmp_path):
    def governor(cpu: int, name: str) -> None:
        path = tmp_path / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        path.parent.mkdir(parents=True)
        path.write_text(name + "\n")

    unknown = pf.frequency_governors([0, 1], tmp_path)
    assert unknown["ok"] and unknown["value"] is None and "cannot be told" in unknown["note"]
    governor(0, "performance")
    assert pf.frequency_governors([0], tmp_path)["ok"]
    governor(1, "powersave")
    scaled = pf.frequency_governors([0, 1], tmp_path)
    assert not scaled["ok"] and scaled["value"] == ["performance", "powersave"]


def test_a_cgroup_quota_below_the_cpus_used_warns(tmp_path):
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self/cgroup").write_text("0::/jobs/run\n")
    folder = sys_root / "fs/cgroup/jobs/run"
    folder.mkdir(parents=True)
    (folder / "cpu.max").write_text("50000 100000\n")
    half = pf.cgroup_quota(2, sys_root, proc)
    assert not half["ok"] and half["value"] == 0.5
    (folder / "cpu.max").write_text("max 100000\n")
    assert pf.cgroup_quota(2, sys_root, proc) | {"note": ""} == {
        "check": "cgroup CPU quota", "value": "none", "ok": True, "note": ""}  # fmt: skip
    # cgroup v1
    (proc / "self/cgroup").write_text("4:cpu,cpuacct:/box\n")
    v1 = sys_root / "fs/cgroup/cpu,cpuacct/box"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert pf.cgroup_quota(2, sys_root, proc)["value"] == 3.0
    assert pf.cgroup_quota(4, sys_root, proc)["ok"] is False


def test_a_busy_gpu_and_another_process_on_it_warn(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=*) echo "0, NVIDIA H200, 87, 20480" ;;\n'
        '  --query-compute-apps=*) echo "4242, python3, 20000" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{pf.os.environ['PATH']}")
    gpu = pf.gpu_busy(ignore=set())
    assert not gpu["ok"]
    assert gpu["value"]["gpus"][0]["utilization"] == 87
    assert gpu["value"]["processes"] == [{"pid": 4242, "name": "python3", "memory_mib": 20000}]
    assert "87% busy" in gpu["note"] and "4242" in gpu["note"]
    # The run's own process on the GPU is not someone else's.
    assert pf.gpu_busy(ignore={4242})["value"]["processes"] == []


def test_no_nvidia_smi_is_no_gpu_to_check(monkeypatch):
    monkeypatch.setattr(pf.shutil, "which", lambda name: None)
    assert pf.gpu_busy()["ok"]


def test_the_record_is_what_the_results_schema_describes():
    import json

    import jsonschema

    from twinbench.experiments.results import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text())["properties"]["preflight"]
    jsonschema.validate(json.loads(json.dumps(pf.preflight(sample_s=0.05))), schema)
