"""Every workload trains to the end in both frameworks, through the real services."""

import grpc
import numpy as np
import pytest

from conftest import wait_for
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.console import describe_job
from twinbench.client.inference import infer_sample
from twinbench.models.catalogue import get_model_spec

# A few steps each: this proves the plumbing of every workload, not its accuracy.
WORKLOADS = {
    "mlp": dict(dataset="mnist-5k", train_samples=128, epochs=2),
    "mnist_cnn": dict(dataset="digits", train_samples=128, epochs=2),
    "cnn3": dict(dataset="synthetic", train_samples=32, epochs=1, batch_size=16),
    # Batch norm, residual blocks, strided and padded convs, global pooling, through both
    # trainers and every export format; 1,000 random classes: any accuracy is a target reached.
    "resnet50": dict(dataset="synthetic", train_samples=32, epochs=1, batch_size=16,
                     width=0.125, image_size=64, target_accuracy=0.0),
}  # fmt: skip
FORMATS = {"torch": ["torchscript", "onnx"], "tf": ["savedmodel", "onnx"]}


@pytest.fixture(scope="module")
def workload_jobs(client):
    jobs = {}
    for model, options in WORKLOADS.items():
        spec = tpb.JobSpec(framework="both", model=model, **{"target_accuracy": 0.05, **options})
        for job in client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs:
            jobs[(model, job.spec.framework)] = job.id
    return {key: wait_for(client, job_id, timeout_s=600)[0] for key, job_id in jobs.items()}


@pytest.mark.parametrize("model", sorted(WORKLOADS))
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_every_workload_runs_to_the_end_and_exports(workload_jobs, model, framework):
    job = workload_jobs[(model, framework)]
    assert job.state == tpb.SUCCEEDED, job.error
    assert [e.format for e in job.exports] == FORMATS[framework]
    assert all(e.max_abs_diff <= 1e-4 for e in job.exports)
    assert len(job.epochs) == WORKLOADS[model]["epochs"]
    assert job.warmup_seconds > 0 and job.steady_samples_per_second > 0
    assert job.peak_rss_bytes > 50 * 2**20
    assert job.target_epoch == 1 and 0 < job.time_to_target_seconds <= job.train_seconds
    if model == "resnet50":
        assert job.parameter_count == get_model_spec("resnet50", 0.125, 64).parameter_count()
        assert job.spec.width == 0.125 and job.spec.image_size == 64
    assert job.fairness["optimizer"].startswith("SGD" if model in ("mlp", "resnet50") else "Adam")
    assert "shared" in job.fairness["init"]
    if model == "cnn3":
        assert "rotation" in job.fairness["augmentation"].lower()


def test_a_new_architecture_is_served_in_every_format_through_the_gateway(workload_jobs, client):
    # The input comes from the served model's metadata (3x64x64 here), not from 28x28 digits.
    for framework in ("torch", "tf"):
        exports = workload_jobs[("resnet50", framework)].exports
        logits = [infer_sample(client, e.model_name, sample=1, version=e.version) for e in exports]
        assert [z.shape for z in logits] == [(1000,)] * 2
        scale = np.abs(logits[0]).max()
        np.testing.assert_allclose(logits[1], logits[0], atol=1e-4 * scale)  # runtime vs ONNX


def test_jobs_show_prints_every_figure(workload_jobs):
    job = workload_jobs[("cnn3", "tf")]
    text = describe_job(job)
    assert job.framework_version.startswith("tensorflow ")  # as the trainer recorded it
    for figure in ("test: loss", "warm-up (first", "steady", "peak RSS", "peak GPU", "threads intra-op",
                   "target val accuracy", "confusion matrix", "augmentation", "export cnn3-tf-onnx",
                   job.framework_version, "init shared"):  # fmt: skip
        assert figure in text, figure


def test_both_frameworks_write_tensorboard_runs_side_by_side(workload_jobs, home):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for framework in ("torch", "tf"):
        job = workload_jobs[("mlp", framework)]
        run = home / "runs" / "mlp-mnist-5k" / job.id
        events = EventAccumulator(str(run))
        events.Reload()
        assert {"loss/train", "accuracy/validation", "speed/samples_per_second"} <= set(
            events.Tags()["scalars"]
        )
        losses = [e.value for e in events.Scalars("loss/train")]
        assert len(losses) == 2
        assert losses[0] == pytest.approx(job.epochs[0].train_loss, rel=1e-6)


def test_a_job_on_missing_data_fails_with_the_reason(client):
    spec = tpb.JobSpec(framework="torch", model="lenet5", dataset="mnist", epochs=1)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    final, _ = wait_for(client, job.id)
    assert final.state == tpb.FAILED
    assert "twinbench data download mnist" in final.error


def test_a_bad_knob_is_refused_with_invalid_argument(client):
    for spec in (
        tpb.JobSpec(framework="torch", model="resnet50", width=-1),
        tpb.JobSpec(framework="tf", model="lenet5", image_size=64),
    ):
        with pytest.raises(grpc.RpcError) as err:
            client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_dataset_path_outside_the_data_folder_is_refused(client):
    spec = tpb.JobSpec(framework="both", model="cnn3", dataset="imagefolder:../../etc")
    with pytest.raises(grpc.RpcError) as err:
        client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
