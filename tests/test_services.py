"""The real services on loopback: train through the gateway, serve every export, refuse bad input."""

import grpc
import numpy as np
import pytest

from conftest import wait_for
from tally import TALLY
from tests_support import in_process_logits, until
from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import load_dataset
from twinbench.models.catalogue import MODELS
from twinbench.rpc.channel import is_serving
from twinbench.serving.tensors import infer_request, output_array

EXPORTS = {
    "torch": ["lenet5-torch-torchscript", "lenet5-torch-onnx"],
    "tf": ["lenet5-tf-savedmodel", "lenet5-tf-onnx"],
}


def test_all_three_services_report_serving(stack):
    for service in ("gateway", "torch_trainer", "tf_trainer"):
        assert is_serving(stack.address(service)), service


def test_both_frameworks_train_and_export_through_the_gateway(trained):
    for framework, (job, events) in trained.items():
        assert job.state == tpb.SUCCEEDED, job.error
        assert job.spec.epochs == 2 and job.spec.batch_size == 32  # the resolved spec is recorded
        assert job.spec.optimizer.name == "adam" and job.spec.optimizer.epsilon == pytest.approx(
            1e-8
        )
        assert job.parameter_count == MODELS["lenet5"].parameter_count() and job.device == "cpu"
        assert [e.epoch for e in job.epochs] == [1, 2]
        assert all(e.samples_per_second > 0 and 0 < e.val_accuracy <= 1 for e in job.epochs)
        assert 0.5 < job.test_accuracy <= 1  # 1,024 images, two epochs: far above chance
        assert sum(job.confusion_matrix) == 1000 and job.num_classes == 10
        assert [e.model_name for e in job.exports] == EXPORTS[framework]
        assert all(e.max_abs_diff <= 1e-4 and len(e.sha256) == 64 for e in job.exports)
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "job" and "epoch" in kinds and "progress" in kinds
        assert events[-1].job.state == tpb.SUCCEEDED


def test_every_export_serves_through_the_gateway(client, trained, home):
    batch = load_dataset("mnist-5k").test.x[:8]
    index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest())
    served = {m.name for m in index.models if m.state == "READY"}
    for job, _ in trained.values():
        for export in job.exports:
            assert export.model_name in served
            # Other tests share this stack and may have published newer versions: ask for this one.
            request = infer_request(export.model_name, batch, version=export.version)
            reply = client.inference.ModelInfer(request)
            assert reply.model_version == export.version
            logits = output_array(reply, "logits")
            assert logits.shape == (8, 10)
            np.testing.assert_allclose(logits, in_process_logits(home, export, batch), atol=1e-4)
            meta = client.inference.ModelMetadata(ipb.ModelMetadataRequest(name=export.model_name))
            assert (
                list(meta.inputs[0].shape) == [-1, 1, 28, 28] and meta.outputs[0].name == "logits"
            )
            assert client.inference.ModelReady(ipb.ModelReadyRequest(name=export.model_name)).ready


def test_typed_contents_give_the_same_answer_as_raw(client, trained):
    image = load_dataset("mnist-5k").test.x[:1]
    raw = output_array(
        client.inference.ModelInfer(infer_request("lenet5-tf-onnx", image)), "logits"
    )
    request = ipb.ModelInferRequest(model_name="lenet5-tf-onnx")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.inputs[0].contents.fp32_contents.extend(image.ravel().tolist())
    typed = output_array(client.inference.ModelInfer(request), "logits")
    np.testing.assert_array_equal(raw, typed)


def _image_request(model="lenet5-torch-onnx", **change):
    request = infer_request(model, np.zeros((1, 1, 28, 28), np.float32))
    for key, value in change.items():
        if key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        elif key == "datatype":
            request.inputs[0].datatype = value
        elif key == "raw":
            request.raw_input_contents[0] = value
        elif key == "output":
            request.outputs.add(name=value)
        elif key == "version":
            request.model_version = value
        elif key == "empty":
            del request.inputs[:]
            del request.raw_input_contents[:]
    return request


BAD_INFERENCES = [
    (
        "wrong shape",
        _image_request(shape=[1, 28, 28], raw=b"\0" * 4 * 784),
        "INVALID_ARGUMENT",
        "takes [-1, 1, 28, 28]",
    ),
    (
        "wrong datatype",
        _image_request(datatype="FP64", raw=b"\0" * 8 * 784),
        "INVALID_ARGUMENT",
        "must be FP32",
    ),
    ("byte count", _image_request(raw=b"\0" * 100), "INVALID_ARGUMENT", "100 bytes"),
    ("no inputs", _image_request(empty=True), "INVALID_ARGUMENT", "no inputs"),
    ("no model name", _image_request(model=""), "INVALID_ARGUMENT", "names no model"),
    ("unknown model", _image_request(model="nope-torch-onnx"), "NOT_FOUND", "unknown model"),
    (
        "model name as a path",
        _image_request(model="../lenet5-torch-onnx"),
        "INVALID_ARGUMENT",
        "not a model name",
    ),
    ("unknown version", _image_request(version="99"), "NOT_FOUND", "no version '99'"),
    ("unknown output", _image_request(output="probs"), "INVALID_ARGUMENT", "no output 'probs'"),
    (
        "batch too big",
        infer_request("lenet5-torch-onnx", np.zeros((257, 1, 28, 28), np.float32)),
        "INVALID_ARGUMENT",
        "batch size 257",
    ),
]


@pytest.mark.parametrize(
    "case, request_, code, message", BAD_INFERENCES, ids=[c[0] for c in BAD_INFERENCES]
)
def test_bad_inference_gets_its_code_and_the_next_request_works(
    client, trained, case, request_, code, message
):
    TALLY["bad inputs tried"] += 1
    with pytest.raises(grpc.RpcError) as err:
        client.inference.ModelInfer(request_)
    assert err.value.code() == grpc.StatusCode[code]
    assert message in err.value.details() and "Traceback" not in err.value.details()
    assert client.inference.ModelInfer(_image_request()).outputs[0].name == "logits"


BAD_JOB_CALLS = [
    ("unknown job", "GetJob", tpb.GetJobRequest(job_id="torch-000000000000"), "NOT_FOUND"),
    ("job of no framework", "GetJob", tpb.GetJobRequest(job_id="jax-1"), "INVALID_ARGUMENT"),
    (
        "cancel unknown job",
        "CancelJob",
        tpb.CancelJobRequest(job_id="tf-0123456789ab"),
        "NOT_FOUND",
    ),
    ("job id as a path", "GetJob", tpb.GetJobRequest(job_id="../torch-1"), "INVALID_ARGUMENT"),
    (
        "unknown framework",
        "CreateJob",
        tpb.CreateJobRequest(spec=tpb.JobSpec(framework="mxnet", model="lenet5")),
        "INVALID_ARGUMENT",
    ),
    (
        "unknown model",
        "CreateJob",
        tpb.CreateJobRequest(spec=tpb.JobSpec(framework="both", model="vgg")),
        "INVALID_ARGUMENT",
    ),
    (
        "zero epochs",
        "CreateJob",
        tpb.CreateJobRequest(spec=tpb.JobSpec(framework="torch", model="lenet5", epochs=0)),
        "INVALID_ARGUMENT",
    ),
    (
        "negative batch",
        "CreateJob",
        tpb.CreateJobRequest(spec=tpb.JobSpec(framework="tf", model="mlp", batch_size=-1)),
        "INVALID_ARGUMENT",
    ),
    (
        "absurd learning rate",
        "CreateJob",
        tpb.CreateJobRequest(
            spec=tpb.JobSpec(
                framework="both", model="mlp", optimizer=tpb.Optimizer(learning_rate=1e9)
            )
        ),
        "INVALID_ARGUMENT",
    ),
]


@pytest.mark.parametrize(
    "case, method, request_, code", BAD_JOB_CALLS, ids=[c[0] for c in BAD_JOB_CALLS]
)
def test_bad_job_calls_get_their_code(client, case, method, request_, code):
    TALLY["bad inputs tried"] += 1
    before = [j.id for j in client.trainer.ListJobs(tpb.ListJobsRequest()).jobs]
    with pytest.raises(grpc.RpcError) as err:
        getattr(client.trainer, method)(request_)
    assert err.value.code() == grpc.StatusCode[code]
    # Refused whole: no job was created or changed, and the service answers on.
    after = [j.id for j in client.trainer.ListJobs(tpb.ListJobsRequest()).jobs]
    assert after == before


def test_a_running_job_can_be_cancelled(client):
    spec = tpb.JobSpec(framework="torch", model="mlp", epochs=200)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    stream = client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job.id), timeout=120)
    for event in stream:
        if event.WhichOneof("event") == "progress":
            break  # it is training now
    cancelled = client.trainer.CancelJob(tpb.CancelJobRequest(job_id=job.id))
    assert cancelled.id == job.id
    stream.cancel()
    final, _ = wait_for(client, job.id)
    assert final.state == tpb.CANCELLED and not final.exports
    assert len(final.epochs) < 200


def test_jobs_outlive_a_trainer_restart_and_the_gateway_keeps_serving(stack, client, trained):
    torch_job, _ = trained["torch"]
    image = infer_request("lenet5-tf-onnx", load_dataset("mnist-5k").test.x[:1])
    stack.stop_service("torch_trainer")
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.inference.ModelInfer(
                infer_request("lenet5-torch-onnx", np.zeros((1, 1, 28, 28), np.float32)), timeout=20
            )
        assert (
            err.value.code() == grpc.StatusCode.UNAVAILABLE
            and "torch trainer" in err.value.details()
        )
        assert client.inference.ModelInfer(image, timeout=20).model_name == "lenet5-tf-onnx"
        index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest())
        assert {m.state for m in index.models if "-torch-" in m.name} == {"UNAVAILABLE"}
    finally:
        stack.restart("torch_trainer")
    last_error = ""

    def answered() -> tpb.Job | None:
        nonlocal last_error
        try:
            return client.trainer.GetJob(tpb.GetJobRequest(job_id=torch_job.id), timeout=5)
        except grpc.RpcError as exc:  # the gateway's channel reconnects by itself, with backoff
            last_error = f"last error: {exc.code()} {exc.details()}"
            return None

    again = until(
        answered,
        "the restarted torch trainer to answer through the gateway",
        30,
        poll_s=0.5,
        on_timeout=lambda: last_error,
    )
    assert again.state == tpb.SUCCEEDED and again.test_accuracy == torch_job.test_accuracy
    reply = client.inference.ModelInfer(
        infer_request("lenet5-torch-onnx", np.zeros((1, 1, 28, 28), np.float32))
    )
    assert reply.model_name == "lenet5-torch-onnx"
