"""NCF and GNMT as workloads: their data, equal losses in both frameworks, and jobs trained,
exported and served through the real services with INT64 inputs."""

import zipfile

import grpc
import numpy as np
import pytest

from conftest import wait_for
from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.inference import sample_input
from twinbench.data.datasets import NEGATIVES_PER_POSITIVE, load_dataset
from twinbench.data.download import SOURCES
from twinbench.errors import InvalidArgument
from twinbench.models.id_models import id_model
from twinbench.models.tasks import PAD_ID, task_for
from twinbench.serving.tensors import infer_request, output_array

# Tiny: a few steps each, which proves the plumbing, not the accuracy.
JOBS = {
    "ncf": dict(width=0.01, train_samples=512, batch_size=64),
    "gnmt": dict(width=0.01, train_samples=64, batch_size=16),
}
FORMATS = {"torch": ["torchscript", "onnx"], "tf": ["savedmodel", "onnx"]}
INPUTS = {
    "ncf": [("user", [-1]), ("item", [-1])],
    "gnmt": [("source", [-1, 50]), ("target", [-1, 50])],
}


def test_synthetic_interactions_are_positives_and_sampled_negatives():
    model = id_model("ncf", 0.01)
    data = load_dataset("synthetic", model)
    x = np.concatenate([data.train.x, data.val.x, data.test.x])
    y = np.concatenate([data.train.y, data.val.y, data.test.y])
    assert x.dtype == np.int64 and x.shape[1] == 2 and set(np.unique(y)) == {0, 1}
    assert (y == 0).sum() == NEGATIVES_PER_POSITIVE * (y == 1).sum()
    keys = x[:, 0] * model.items + x[:, 1]
    assert not np.isin(keys[y == 0], keys[y == 1]).any()  # no negative is a positive
    assert x[:, 0].max() < model.users and x[:, 1].max() < model.items
    again = load_dataset.__wrapped__("synthetic", model)  # seeded: the same rows again
    np.testing.assert_array_equal(again.test.x, data.test.x)


def test_synthetic_sequences_are_teacher_forced_and_padded():
    model = id_model("gnmt", 0.01)
    data = load_dataset("synthetic", model)
    source, decoder_input = task_for(model).split(data.train.x)
    target = data.train.y
    assert source.shape == decoder_input.shape == target.shape == (len(target), 50)
    # The decoder reads the target shifted right behind the begin token; pads line up.
    np.testing.assert_array_equal(
        decoder_input[:, 1:][target[:, 1:] != PAD_ID], target[:, :-1][target[:, 1:] != PAD_ID]
    )
    assert ((target == PAD_ID) == (decoder_input == PAD_ID)).all()
    assert task_for(model).units(target) == int((target != PAD_ID).sum())


def test_movielens_is_read_from_its_zip_as_implicit_feedback(tmp_path):
    ratings = (
        b"1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n3::30::1::978300275\n"
    )
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    with zipfile.ZipFile(folder / "ml-1m.zip", "w") as z:
        z.writestr("ml-1m/ratings.dat", ratings)
    data = load_dataset("ml-1m", id_model("ncf"), tmp_path)
    y = np.concatenate([data.train.y, data.val.y, data.test.y])
    assert (y == 1).sum() == 4 and (y == 0).sum() == 4 * NEGATIVES_PER_POSITIVE
    with pytest.raises(InvalidArgument, match="3 users and 3 items"):
        load_dataset("ml-1m", id_model("ncf", 2 / 138_493), tmp_path)
    with pytest.raises(InvalidArgument, match="twinbench data download ml-20m"):
        load_dataset("ml-20m", id_model("ncf"), tmp_path)
    assert all(
        len(sha) == 64 for name in ("ml-1m", "ml-20m") for sha in SOURCES[name].sha256.values()
    )


@pytest.mark.parametrize("name", ["ncf", "gnmt"])
def test_both_frameworks_compute_the_same_loss_on_the_same_batch(name):
    """From the shared initial weights, one batch: the same loss (before the step) in both, and
    after one Adam step from it, the same loss on the next batch."""
    from twinbench.frameworks.tf.id_session import TFIdSession
    from twinbench.frameworks.torch.id_session import TorchIdSession
    from twinbench.jobs.request import job_model, resolve_spec

    losses = {}
    for framework, session_class in (("torch", TorchIdSession), ("tf", TFIdSession)):
        spec = resolve_spec(tpb.JobSpec(framework=framework, model=name, width=0.01))
        model = job_model(spec)
        train = load_dataset("synthetic", model).train
        session = session_class(spec, model)
        losses[framework] = [
            float(session.train_batch(train.x[r], train.y[r])[0])
            for r in (slice(0, 32), slice(32, 64))
        ]
    np.testing.assert_allclose(losses["tf"][0], losses["torch"][0], rtol=1e-6)
    # Adam's epsilon sits on either side of the bias correction: a step apart, not a result apart.
    np.testing.assert_allclose(losses["tf"][1], losses["torch"][1], rtol=1e-4)


@pytest.fixture(scope="module")
def id_jobs(client):
    jobs = {}
    for model, options in JOBS.items():
        spec = tpb.JobSpec(framework="both", model=model, epochs=1, **options)
        for job in client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs:
            jobs[(model, job.spec.framework)] = job.id
    return {key: wait_for(client, job_id, timeout_s=600)[0] for key, job_id in jobs.items()}


@pytest.mark.parametrize("model", sorted(JOBS))
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_an_id_model_trains_to_the_end_and_exports(id_jobs, model, framework):
    job = id_jobs[(model, framework)]
    assert job.state == tpb.SUCCEEDED, job.error
    assert job.task == {"ncf": "ranking", "gnmt": "sequence"}[model]
    assert job.throughput_unit == {"ncf": "samples", "gnmt": "tokens"}[model]
    assert [e.format for e in job.exports] == FORMATS[framework]
    assert all(e.max_abs_diff <= 1e-4 for e in job.exports)
    assert job.steady_samples_per_second > 0 and 0 <= job.test_accuracy <= 1
    assert np.isfinite(job.test_loss) and not job.confusion_matrix  # not a classifier
    steps_rows = JOBS[model]["train_samples"] - job.warmup_steps * JOBS[model]["batch_size"]
    if model == "gnmt":  # tokens: many per row
        assert job.steady_samples > steps_rows
    else:
        assert job.steady_samples == steps_rows
    declared = id_model(model, 0.01)
    keras_count = declared.parameter_count(1) if model == "gnmt" else declared.parameter_count()
    assert job.parameter_count == (
        declared.parameter_count() if framework == "torch" else keras_count
    )
    assert "shared" in job.fairness["init"] and "mean" in job.fairness["loss"]


@pytest.mark.parametrize("model", sorted(JOBS))
def test_an_id_model_is_served_with_int64_inputs_in_every_format(id_jobs, client, model):
    logits = {}
    for framework in ("torch", "tf"):
        for export in id_jobs[(model, framework)].exports:
            meta = client.inference.ModelMetadata(ipb.ModelMetadataRequest(name=export.model_name))
            assert [(i.name, list(i.shape)) for i in meta.inputs] == INPUTS[model]
            assert {i.datatype for i in meta.inputs} == {"INT64"}
            inputs, _ = sample_input(client, export.model_name, 3, export.version)
            assert all(a.dtype == np.int64 for a in inputs.values())
            batch = {k: np.repeat(v, 2, axis=0) for k, v in inputs.items()}
            reply = client.inference.ModelInfer(
                infer_request(export.model_name, batch, version=export.version)
            )
            logits[export.model_name] = output_array(reply, "logits")
    shapes = {z.shape for z in logits.values()}
    assert shapes == ({(2, 1)} if model == "ncf" else {(2, 50, 323)})
    for framework in ("torch", "tf"):  # the framework's own format against its ONNX export
        own, onnx = (logits[e.model_name] for e in id_jobs[(model, framework)].exports)
        np.testing.assert_allclose(own, onnx, atol=1e-4 * max(1.0, np.abs(own).max()))


def test_bad_id_inputs_are_refused_with_invalid_argument(id_jobs, client):
    name = "ncf-torch-onnx"
    good = {"user": np.array([1, 2], np.int64), "item": np.array([3, 4], np.int64)}
    bad_inputs = [
        {**good, "user": good["user"].astype(np.float32)},  # wrong datatype
        {**good, "item": good["item"].reshape(2, 1)},  # wrong shape
        {**good, "item": np.array([3, 10_000], np.int64)},  # an id outside the item table
        {"user": good["user"]},  # an input missing
        {**good, "item": np.array([3], np.int64)},  # batch sizes that differ
    ]
    for inputs in bad_inputs:
        with pytest.raises(grpc.RpcError) as err:
            client.inference.ModelInfer(infer_request(name, inputs))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, inputs
    source = np.zeros((1, 49), np.int64)  # one token short
    with pytest.raises(grpc.RpcError) as err:
        client.inference.ModelInfer(
            infer_request("gnmt-tf-savedmodel", {"source": source, "target": source})
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_locust_loads_an_id_model_with_inputs_from_its_metadata(id_jobs, stack, tmp_path):
    from twinbench.experiments.loadtest import run_locust

    for model in ("ncf-tf-savedmodel", "gnmt-torch-onnx"):
        # Answered without a failure; how many requests fit depends on the machine's load.
        stats = run_locust(stack.gateway_address, model, 2, "5s", 2, None, tmp_path / model)
        assert stats["requests"] >= 1 and stats["failures"] == 0, (model, stats)


def test_id_model_knobs_that_do_not_apply_are_refused(client):
    for spec in (
        tpb.JobSpec(framework="torch", model="ncf", image_size=64),
        tpb.JobSpec(framework="tf", model="gnmt", dataset="mnist-5k", width=0.01),
    ):
        with pytest.raises(grpc.RpcError) as err:
            client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bench_training_measures_id_models_in_their_own_units(client):
    from twinbench.experiments.bench_training import BenchOptions, run_training_bench, table_rows

    options = BenchOptions(
        models=("ncf", "gnmt"), repeats=1, batch_size=16, warmup_steps=1, steps=2, width=0.01
    )
    results = run_training_bench(client, options, progress=lambda line: None)
    for row, unit in zip(results["rows"], ("samples", "tokens"), strict=True):
        assert row["unit"] == unit
        for framework in ("torch", "tf"):
            (run,) = row["runs"][framework]
            assert run["state"] == "succeeded" and run["unit"] == unit, run
            assert run["samples_per_second"] > 0
    headers, rows = table_rows(results)
    assert [r[headers.index("unit")] for r in rows] == ["samples", "tokens"]
