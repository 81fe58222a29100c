"""Job specs, the SQLite store and the queue, without servers."""

import threading

import pytest

from tests_support import until
from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument, NotFound
from twinbench.jobs.request import TERMINAL, resolve_spec
from twinbench.trainer.queue import JobManager, JobStore

# The jobs here are in-process fakes that change state within milliseconds, and a look at the
# store is cheap: polling this often keeps the tests from idling.
JOB_POLL_S = 0.01


def test_defaults_are_filled_in_and_recorded():
    spec = resolve_spec(tpb.JobSpec(framework="tf", model="mlp"))
    assert (spec.epochs, spec.batch_size, spec.dataset, spec.device) == (21, 64, "mnist-5k", "auto")
    assert spec.optimizer.name == "sgd"
    assert spec.optimizer.learning_rate == pytest.approx(0.0236)
    assert spec.optimizer.momentum == pytest.approx(0.0643)
    assert list(spec.export_formats) == ["savedmodel", "onnx"]
    adam = resolve_spec(tpb.JobSpec(framework="torch", model="lenet5")).optimizer
    assert (adam.name, adam.epsilon) == ("adam", pytest.approx(1e-8))


BAD_SPECS = [
    (dict(framework="mxnet", model="lenet5"), "unknown framework"),
    (dict(framework="torch", model="resnet"), "unknown model"),
    (dict(framework="torch", model="lenet5", dataset="imagenet"), "unknown dataset"),
    (dict(framework="torch", model="lenet5", epochs=0), "epochs"),
    (dict(framework="torch", model="lenet5", epochs=-3), "epochs"),
    (dict(framework="torch", model="lenet5", batch_size=0), "batch_size"),
    (dict(framework="torch", model="lenet5", seed=-1), "seed"),
    (dict(framework="torch", model="lenet5", device="tpu"), "device"),
    (dict(framework="torch", model="lenet5", train_samples=0), "train_samples"),
    (dict(framework="torch", model="lenet5", export_formats=["savedmodel"]), "torch exports"),
    (dict(framework="torch", model="lenet5", optimizer=tpb.Optimizer(name="lbfgs")), "optimizer"),
    (
        dict(framework="tf", model="lenet5", optimizer=tpb.Optimizer(learning_rate=1e6)),
        "learning_rate",
    ),
    (dict(framework="tf", model="mlp", optimizer=tpb.Optimizer(momentum=1.5)), "momentum"),
    (dict(framework="jax", model="lenet5", precision="mixed"), "jax trains in fp32 only"),
    (dict(framework="jax", model="lenet5", channels_last=True), "channels_last is for PyTorch"),
]


@pytest.mark.parametrize("fields, message", BAD_SPECS)
def test_bad_specs_are_refused_with_what_to_change(fields, message):
    with pytest.raises(InvalidArgument, match=message):
        resolve_spec(tpb.JobSpec(**fields))


def test_a_field_this_service_does_not_know_is_refused_not_dropped():
    """A newer client's field (here number 999 in the spec, 99 in its optimizer) would
    otherwise vanish in parsing, and the job would train something else than was asked."""
    known = tpb.JobSpec(framework="torch", model="mlp").SerializeToString()
    newer = tpb.JobSpec.FromString(known + bytes([0xB8, 0x3E, 0x01]))  # field 999, varint 1
    with pytest.raises(InvalidArgument, match="JobSpec field.s. 999"):
        resolve_spec(newer)
    optimizer = tpb.Optimizer.FromString(bytes([0x98, 0x06, 0x01]))  # field 99, varint 1
    with pytest.raises(InvalidArgument, match="Optimizer field.s. 99"):
        resolve_spec(tpb.JobSpec(framework="torch", model="mlp", optimizer=optimizer))


def test_store_survives_reopening(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.put(tpb.Job(id="torch-a", state=tpb.SUCCEEDED, created_at=1, test_accuracy=0.9))
    store.put(tpb.Job(id="torch-b", state=tpb.QUEUED, created_at=2))
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite")
    assert reopened.get("torch-a").test_accuracy == pytest.approx(0.9)
    assert [j.id for j in reopened.list()] == ["torch-a", "torch-b"]
    assert [j.id for j in reopened.list(states=(tpb.QUEUED,))] == ["torch-b"]
    assert reopened.get("torch-zzz") is None


def test_restart_fails_the_running_job_and_runs_the_queued_one(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    spec = resolve_spec(tpb.JobSpec(framework="torch", model="lenet5"))
    store.put(tpb.Job(id="torch-0000000000a1", spec=spec, state=tpb.RUNNING, created_at=1))
    store.put(tpb.Job(id="torch-0000000000a2", spec=spec, state=tpb.QUEUED, created_at=2))
    ran = []
    manager = JobManager("torch", store, lambda job, ctx: ran.append(job.id))
    manager.start()
    job = _wait_terminal(manager, "torch-0000000000a2")
    manager.stop()
    assert ran == ["torch-0000000000a2"] and job.state == tpb.SUCCEEDED
    lost = store.get("torch-0000000000a1")
    assert lost.state == tpb.FAILED and "stopped while this job was running" in lost.error


def test_jobs_run_one_at_a_time_in_order_and_cancel(tmp_path):
    running = []
    overlap = threading.Event()
    release = threading.Event()

    def run(job, ctx):
        if running:
            overlap.set()
        running.append(job.id)
        try:
            while not release.wait(0.01):
                ctx.check_cancelled()
        finally:
            running.remove(job.id)

    manager = JobManager("torch", JobStore(tmp_path / "jobs.sqlite"), run)
    manager.start()
    spec = tpb.JobSpec(framework="torch", model="lenet5")
    first, second, third = (manager.create(spec) for _ in range(3))
    assert manager.get(second.id).state == tpb.QUEUED
    manager.cancel(third.id)  # still queued: cancelled at once, never runs
    assert manager.get(third.id).state == tpb.CANCELLED
    until(
        lambda: manager.get(first.id).state == tpb.RUNNING, "the first job to run", 10, JOB_POLL_S
    )
    manager.cancel(first.id)
    assert _wait_terminal(manager, first.id).state == tpb.CANCELLED
    release.set()
    assert _wait_terminal(manager, second.id).state == tpb.SUCCEEDED
    manager.stop()
    assert not overlap.is_set()
    with pytest.raises(NotFound):
        manager.get("torch-0000000000ff")


def _wait_terminal(manager, job_id):
    def finished() -> tpb.Job | None:
        job = manager.get(job_id)
        return job if job.state in TERMINAL else None

    return until(finished, f"job {job_id} to finish", 10, JOB_POLL_S)
