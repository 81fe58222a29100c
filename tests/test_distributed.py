"""Data-parallel jobs on this CPU: two workers train what one worker trains, in both frameworks;
a killed worker fails its job with a clear error; the spec's limits and the record's world."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests_support import until
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.console import describe_job
from twinbench.config import load_settings
from twinbench.errors import InvalidArgument
from twinbench.jobs.request import TERMINAL, is_distributed, resolve_spec
from twinbench.trainer.queue import JobManager, JobStore
from twinbench.trainer.worker_group import run_distributed
from twinbench.trainer.workers import run_in_worker
from twinbench.training.parallel import WorkerStats, shard, worker_cpus

FRAMEWORKS = {
    "torch": "twinbench.frameworks.torch.framework:TorchFramework",
    "tf": "twinbench.frameworks.tf.framework:TFFramework",
}
BATCH = 32
# 19 full batches and one of 7 rows: 20 SGD steps, the last split unevenly (4 and 3 rows).
ROWS = 19 * BATCH + 7
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture
def manager(tmp_path, request, monkeypatch):
    framework = request.param
    # The job processes read their settings from the environment, as under a trainer.
    env = {"TWINBENCH_HOME": str(tmp_path), "TWINBENCH_TRAIN_THREADS": "2",
           "TWINBENCH_TRAIN_INTEROP_THREADS": "2"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(env)

    def run_job(job, ctx):
        run = run_distributed if is_distributed(job.spec) else run_in_worker
        run(FRAMEWORKS[framework], job, ctx, settings)

    m = JobManager(framework, JobStore(settings.jobs_db(framework)), run_job)
    m.start()
    yield m, settings
    m.stop()


def _finish(manager: JobManager, job_id: str, timeout_s: float = 300) -> tpb.Job:
    def finished() -> tpb.Job | None:
        job = manager.get(job_id)
        return job if job.state in TERMINAL else None

    return until(
        finished,
        f"{job_id} to finish",
        timeout_s,
        poll_s=0.2,
        on_timeout=lambda: f"{job_id} is still {tpb.JobState.Name(manager.get(job_id).state)}",
    )


def _onnx_weights(settings, job: tpb.Job) -> dict[str, np.ndarray]:
    (export,) = job.exports
    model = onnx.load(str(Path(settings.model_repository) / export.path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT}  # fmt: skip


@pytest.mark.integration  # real worker processes of both frameworks
@pytest.mark.parametrize("manager", ["torch", "tf"], indirect=True)
def test_two_workers_train_the_weights_one_worker_trains(manager):
    m, settings = manager
    framework = m.framework
    spec = dict(framework=framework, model="mlp", dataset="mnist-5k", epochs=1,
                batch_size=BATCH, train_samples=ROWS, seed=3, export_formats=["onnx"],
                optimizer=tpb.Optimizer(name="sgd", learning_rate=0.05, momentum=0.0))  # fmt: skip
    one = _finish(m, m.create(tpb.JobSpec(**spec)).id)
    two = _finish(m, m.create(tpb.JobSpec(**spec, workers=2)).id)
    assert one.state == two.state == tpb.SUCCEEDED, (one.error, two.error)
    assert two.world_size == 2 and [w.rank for w in two.workers] == [0, 1]
    assert [w.samples for w in two.workers] == [ROWS // 2 + 1, ROWS // 2]  # 308 and 307 rows
    assert len({w.pid for w in two.workers}) == 2
    assert all(w.steady_samples_per_second > 0 for w in two.workers)
    assert two.communication.backend in ("gloo", "ring") and two.communication.all_reduce
    assert len(two.exports) == 1  # rank 0 alone exported
    # The epoch's figures are over both shards: the same as one worker's.
    assert two.epochs[0].train_loss == pytest.approx(one.epochs[0].train_loss, rel=1e-5)
    assert two.epochs[0].train_accuracy == one.epochs[0].train_accuracy
    single, parallel = _onnx_weights(settings, one), _onnx_weights(settings, two)
    assert single.keys() == parallel.keys() and len(single) >= 10  # 5 dense layers
    for name, w in single.items():
        relative = np.linalg.norm(parallel[name] - w) / max(np.linalg.norm(w), 1e-12)
        assert relative <= RELATIVE_TOLERANCE, (framework, name, relative)


@pytest.mark.integration  # real worker processes of both frameworks
@pytest.mark.parametrize("manager", ["torch", "tf"], indirect=True)
def test_a_killed_worker_fails_the_job_and_stops_the_others(manager):
    m, settings = manager
    spec = tpb.JobSpec(framework=m.framework, model="mlp", dataset="mnist-5k", epochs=200,
                       batch_size=BATCH, train_samples=1024, workers=2,
                       skip_export=True)  # fmt: skip
    job = m.create(spec)
    rundir = settings.home / "distributed" / job.id
    until(
        lambda: m.get(job.id).epochs and (rundir / "rank-1.pid").exists(),
        "the job to finish an epoch",
        180,
        poll_s=0.2,
    )
    pids = [int((rundir / f"rank-{r}.pid").read_text()) for r in (0, 1)]
    os.kill(pids[1], signal.SIGKILL)
    final = _finish(m, job.id, timeout_s=60)
    assert final.state == tpb.FAILED
    assert "worker rank 1" in final.error and "before the job finished" in final.error
    for pid in pids:  # rank 0 was stopped with it, not left waiting for its peer
        until(
            lambda pid=pid: not Path(f"/proc/{pid}").exists() or _state(pid) in ("Z", "X"),
            f"worker {pid} to stop",
            30,
            poll_s=0.1,
        )


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def test_shards_cover_every_row_once_and_differ_by_one_at_most():
    rows = np.arange(7)
    parts = [shard(rows, r, 2) for r in range(2)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6]]
    assert worker_cpus([0, 1], 1, 2) == [1] and worker_cpus([0, 1], 0, 1) == [0, 1]
    assert worker_cpus([0], 1, 2) == [0]  # fewer CPUs than workers: they share


def test_worker_figures_survive_the_all_reduce_row():
    stats = WorkerStats(rank=1, pid=4242, samples=307, steady_samples=250, steady_seconds=0.5,
                        intra_op=1, inter_op=1, cpus=[1, 33, 127])  # fmt: skip
    assert WorkerStats.from_row(stats.row()) == stats
    assert stats.record().steady_samples_per_second == 500


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(workers=65), "workers must be 1..64"),
        (dict(workers=4, batch_size=2), "global batch"),
        (dict(devices_per_worker=2, device="cpu"), "needs GPUs"),
        (dict(workers=2, precision="mixed"), "fp32 for now"),
    ],
)
def test_specs_a_data_parallel_job_cannot_run_are_refused(fields, message):
    with pytest.raises(InvalidArgument, match=message):
        resolve_spec(tpb.JobSpec(framework="torch", model="mlp", **fields))


def test_id_models_are_refused_and_the_cli_sets_the_workers():
    from twinbench.cli.jobs import spec_from_args
    from twinbench.cli.main import parser
    from twinbench.jobs.request import check_distributed_spec

    with pytest.raises(InvalidArgument, match="does not train data-parallel"):
        check_distributed_spec(tpb.JobSpec(framework="torch", model="ncf", workers=2,
                                           batch_size=64))  # fmt: skip

    args = parser().parse_args(["train", "--model", "mlp", "--workers", "2"])
    spec = spec_from_args(args, "tf")
    assert spec.workers == 2 and not spec.HasField("devices_per_worker")
    assert resolve_spec(spec).workers == 2


def test_jobs_show_prints_the_world():
    job = tpb.Job(id="torch-0123456789ab", state=tpb.RUNNING, world_size=2,
                  spec=resolve_spec(tpb.JobSpec(framework="torch", model="mlp", workers=2)))  # fmt: skip
    job.communication.backend = "gloo"
    job.workers.add(rank=1, pid=7, samples=300)
    text = describe_job(job)
    assert "world size: 2" in text and "backend gloo" in text and "worker rank 1 (pid 7)" in text


def test_scaling_bench_reports_efficiency_for_both_frameworks(client, tmp_path):
    from twinbench.experiments.bench_scaling import (
        ScalingOptions,
        run_scaling_bench,
        table_rows,
        write_scaling_report,
    )
    from twinbench.experiments.bench_training import BenchOptions

    # One repeat of a small model: this proves the plumbing, not a figure.
    bench = BenchOptions(models=("mlp",), repeats=1, batch_size=32, warmup_steps=2, steps=6)
    results = run_scaling_bench(client, ScalingOptions(bench, (1, 2)), progress=lambda _: None)
    (row,) = results["rows"]
    for framework in ("torch", "tf"):
        one, two = row["runs"][framework][1][0], row["runs"][framework][2][0]
        assert one["state"] == two["state"] == "succeeded", (one["error"], two["error"])
        assert one["world_size"] == 1 and two["world_size"] == 2
        assert [w["rank"] for w in two["workers"]] == [0, 1]
    kinds = sorted((v["kind"], v.get("framework") or "") for v in results["verdicts"])
    assert kinds == [("efficiency", ""), ("speed-up", "tf"), ("speed-up", "torch"),
                     ("throughput", ""), ("throughput", "")]  # fmt: skip
    headers, rows = table_rows(results)
    assert [r[2] for r in rows] == ["1", "2"] and rows[0][6] == "1 (baseline)"
    paths = write_scaling_report(tmp_path, results)
    reread = json.loads(paths[0].read_text())
    assert table_rows(reread) == (headers, rows)  # the report reads back as it was written


def test_locust_distributed_master_and_worker_load_a_real_gateway(stack, trained, tmp_path):
    """One master and one worker process, headless: the master runs no users, so every request
    it counts came from its worker. 15 s, since the worker's users first load their inputs (the
    test set), which on a busy machine took more than the 4 s a first version ran."""
    import socket
    import subprocess
    import sys

    from twinbench.experiments.loadtest import LOCUSTFILE

    job, _ = trained["torch"]
    model = next(e.model_name for e in job.exports if e.format == "onnx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host",
              stack.gateway_address, "--models", model, "--loglevel", "WARNING"]  # fmt: skip
    totals = tmp_path / "totals.json"
    master = subprocess.Popen(
        [*common, "--master", "--headless", "--master-bind-host", "127.0.0.1",
         "--master-bind-port", str(port), "--expect-workers", "1", "-u", "2", "-r", "2",
         "-t", "15s", "--totals-file", str(totals), "--only-summary"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        output, _ = master.communicate(timeout=120)
        assert worker.wait(timeout=60) == 0  # the master stops its workers at the end
    finally:
        for proc in (master, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    counts = json.loads(totals.read_text())
    assert counts["requests"] > 0 and counts["failures"] == 0, output


@pytest.mark.integration
@pytest.mark.parametrize("manager", ["torch"], indirect=True)
def test_a_resumable_job_resumes_with_all_its_workers_after_the_trainer_stops(manager):
    m, settings = manager
    spec = tpb.JobSpec(framework="torch", model="mlp", dataset="mnist-5k", epochs=12,
                       batch_size=BATCH, train_samples=512, workers=2, resume=True,
                       skip_export=True)  # fmt: skip
    job = m.create(spec)
    until(lambda: len(m.get(job.id).epochs) >= 2, "the job to finish two epochs", 180, poll_s=0.2)
    m.stop(timeout_s=60)  # the trainer stopping: rank 0 checkpointed, the job waits to resume
    stopped = m.get(job.id)
    assert stopped.state == tpb.QUEUED, stopped.error
    done = len(stopped.epochs)
    again = JobManager("torch", JobStore(settings.jobs_db("torch")), m.run_job)
    again.start()
    try:
        final = _finish(again, job.id)
    finally:
        again.stop()
    assert final.state == tpb.SUCCEEDED, final.error
    assert [e.epoch for e in final.epochs] == list(range(1, 13))
    assert final.world_size == 2 and all(w.samples > 0 for w in final.workers)
    # The resumed run trained only the epochs after the checkpoint.
    assert final.workers[0].samples < 12 * 256 and done >= 2
