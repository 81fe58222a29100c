"""Each training job in a process of its own: serving's thread settings never reach training, a
job records what ran beside it, and a worker that dies fails its job cleanly."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import wait_for
from tests_support import until
from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import load_dataset
from twinbench.serving.tensors import infer_request, output_array
from twinbench.training.resources import ActiveJobs
from twinbench.training.worker import training_cpus, training_threads

SHORT = dict(model="lenet5", epochs=1, train_samples=256, skip_export=True)


def test_serving_torchscript_first_leaves_training_threads_as_configured(
    client, trained, stack, settings
):
    job, _ = trained["torch"]
    export = next(e for e in job.exports if e.format == "torchscript")
    images = load_dataset("mnist-5k").test.x[:8]
    for i in range(8):  # TorchScript serving sets its calling thread to one intra-op thread
        request = infer_request(export.model_name, images[i : i + 1], version=export.version)
        assert output_array(client.inference.ModelInfer(request), "logits").shape == (1, 10)
    cpus = training_cpus(settings)
    intra, inter = training_threads(settings, cpus)
    assert intra == int(stack.extra_env["TWINBENCH_TRAIN_THREADS"]) > settings.serving_threads
    for framework in ("torch", "tf"):
        (queued,) = client.trainer.CreateJob(
            tpb.CreateJobRequest(spec=tpb.JobSpec(framework=framework, **SHORT))
        ).jobs
        final, _ = wait_for(client, queued.id)
        assert final.state == tpb.SUCCEEDED, final.error
        assert (final.threads.intra_op, final.threads.inter_op) == (intra, inter), framework
        assert list(final.cpu_set) == cpus
        assert 0 < final.baseline_rss_bytes <= final.peak_rss_bytes
        assert not final.exports  # skip_export: trained and evaluated only


def test_a_job_records_another_job_running_beside_it(client, settings):
    # A marker like the one every running job leaves, owned by this (live) test process.
    with ActiveJobs(settings.active_jobs, "tf-0123456789ab"):
        (queued,) = client.trainer.CreateJob(
            tpb.CreateJobRequest(spec=tpb.JobSpec(framework="torch", **SHORT))
        ).jobs
        final, _ = wait_for(client, queued.id)
    assert final.state == tpb.SUCCEEDED, final.error
    assert list(final.overlapped_jobs) == ["tf-0123456789ab"]
    (alone,) = client.trainer.CreateJob(
        tpb.CreateJobRequest(spec=tpb.JobSpec(framework="torch", **SHORT))
    ).jobs
    assert not wait_for(client, alone.id)[0].overlapped_jobs


def test_markers_of_exited_processes_are_not_counted(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / "tf-dead00000000.json"
    dead.write_text(f'{{"host": "{os.uname().nodename}", "pid": {int(exited.stdout)}}}')
    with ActiveJobs(tmp_path, "torch-a") as a, ActiveJobs(tmp_path, "tf-b") as b:
        a.check()
        b.check()
    assert a.seen == {"tf-b"} and b.seen == {"torch-a"}
    assert not (tmp_path / "torch-a.json").exists()  # a finished job leaves no marker


def _job_worker_of(trainer_pid: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == trainer_pid and b"twinbench.training.worker" in cmdline:
            return int(entry)
    return None


def test_a_killed_worker_fails_its_job_and_the_trainer_trains_on(client, stack):
    spec = tpb.JobSpec(framework="torch", model="lenet5", epochs=20, train_samples=1024,
                       skip_export=True)  # fmt: skip
    (queued,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    stream = client.trainer.WatchJob(tpb.WatchJobRequest(job_id=queued.id), timeout=300)
    for event in stream:  # training is under way once the first batch is reported
        if event.WhichOneof("event") == "progress":
            break
    worker = _job_worker_of(stack.procs["torch_trainer"].pid)
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    stream.cancel()
    final, _ = wait_for(client, queued.id)
    assert final.state == tpb.FAILED
    assert "SIGKILL" in final.error and "before the job finished" in final.error
    until(
        lambda: _job_worker_of(stack.procs["torch_trainer"].pid) is None,
        "the killed worker to be reaped",
        30,
        poll_s=0.1,
    )
    (next_job,) = client.trainer.CreateJob(
        tpb.CreateJobRequest(spec=tpb.JobSpec(framework="torch", **SHORT))
    ).jobs
    assert wait_for(client, next_job.id)[0].state == tpb.SUCCEEDED


PIN_CHECK = """
import os, sys, threading
from twinbench.training.resources import pin_process, process_cpus
started = threading.Event()
stop = threading.Event()
early = threading.Thread(target=lambda: (started.set(), stop.wait()))  # a pool started first
early.start()
started.wait()
first = min(os.sched_getaffinity(0))
pin_process([first])
print(sorted(os.sched_getaffinity(early.native_id)), process_cpus())
stop.set()
"""


def test_a_job_pins_every_thread_of_its_process_and_records_what_the_os_reports():
    """A thread started before the pinning (OpenBLAS's pool, started when numpy loads) is pinned
    too, and the record is the OS's answer for all threads, not the set that was asked for."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell a pinned thread from an unpinned one")
    out = subprocess.run(
        [sys.executable, "-c", PIN_CHECK], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    first = min(os.sched_getaffinity(0))
    assert out.split() == [f"[{first}]", f"[{first}]"], out
