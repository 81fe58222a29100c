"""Who may do what, limits, and faults, on a stack of its own: token, TLS, small limits.

Every fault is injected into real processes (SIGKILL, SIGTERM) and counted in the tally.
"""

import subprocess
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from conftest import wait_for
from tally import TALLY
from tests_support import until
from twinbench.api import inference_pb2 as ipb
from twinbench.api import inference_pb2_grpc, trainer_pb2_grpc
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.stack import LocalStack
from twinbench.config import load_settings
from twinbench.data.datasets import load_dataset
from twinbench.rpc.channel import Client, is_serving
from twinbench.serving.repository import FAILPOINT, ModelRepository
from twinbench.serving.tensors import infer_request, output_array

pytestmark = pytest.mark.integration  # the real services

TOKEN = "s3cret-token"
LIMITS = {
    "TWINBENCH_MAX_QUEUED_JOBS": "2",
    "TWINBENCH_MAX_MESSAGE_BYTES": str(1024 * 1024),
    "TWINBENCH_INFERENCE_OPEN": "true",
}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tls_files):
    cert, key = tls_files
    env = {
        "TWINBENCH_HOME": str(tmp_path_factory.mktemp("guarded-home")),
        "TWINBENCH_TOKEN": TOKEN,
        "TWINBENCH_TLS_CERT": str(cert),
        "TWINBENCH_TLS_KEY": str(key),
        "TWINBENCH_TLS_CA": str(cert),
        **LIMITS,
    }
    settings = load_settings(env)
    with LocalStack(settings, {"gateway": 0, "torch_trainer": 0, "tf_trainer": 0}, env) as stack:
        client = Client(stack.gateway_address, settings)
        # One model per trainer to serve, and to be served under faults.
        spec = tpb.JobSpec(framework="both", model="mlp", epochs=1, train_samples=256)
        jobs = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
        assert all(wait_for(client, j.id)[0].state == tpb.SUCCEEDED for j in jobs)
        yield stack, client, settings
        client.close()


IMAGE = np.zeros((1, 1, 28, 28), np.float32)


# --- who may do what ---


def test_calls_without_the_right_token_are_refused_and_learn_nothing(guarded, tls_files):
    stack, client, settings = guarded
    channel = grpc.secure_channel(
        stack.gateway_address, grpc.ssl_channel_credentials(tls_files[0].read_bytes())
    )
    trainer = trainer_pb2_grpc.TrainerStub(channel)
    inference = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    calls = [
        lambda md: trainer.ListJobs(tpb.ListJobsRequest(), metadata=md),
        lambda md: trainer.GetJob(tpb.GetJobRequest(job_id="torch-000000000000"), metadata=md),
        lambda md: trainer.CreateJob(tpb.CreateJobRequest(spec=tpb.JobSpec()), metadata=md),
        lambda md: list(trainer.WatchJob(tpb.WatchJobRequest(job_id="x"), metadata=md)),
        lambda md: inference.RepositoryIndex(ipb.RepositoryIndexRequest(), metadata=md),
    ]
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
        for call in calls:
            TALLY["bad inputs tried"] += 1
            with pytest.raises(grpc.RpcError) as err:
                call(metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.value.details() == "missing or invalid bearer token"
    # Inference is configured open here; the repository is not.
    reply = inference.ModelInfer(infer_request("mlp-torch-onnx", IMAGE))
    assert reply.outputs[0].name == "logits"
    # With the token, everything works (the CLI's client sends it).
    assert client.trainer.ListJobs(tpb.ListJobsRequest()).jobs
    assert is_serving(stack.gateway_address, tls_ca=tls_files[0])  # health needs no token
    channel.close()


def test_inference_needs_the_token_unless_configured_open(tmp_path):
    """The interceptor in front of a real trainer inference servicer, with inference closed."""
    from twinbench.gateway.auth import BearerTokenInterceptor
    from twinbench.rpc.server import create_server
    from twinbench.serving.dataplane import InferenceCore
    from twinbench.serving.repository import ModelRepository
    from twinbench.serving.servicer import InferenceServicer

    settings = load_settings({"TWINBENCH_HOME": str(tmp_path)})
    server, port, _ = create_server(
        "127.0.0.1:0", settings, interceptors=(BearerTokenInterceptor(TOKEN, False),)
    )
    core = InferenceCore(ModelRepository(tmp_path / "repo"), "torch", {})
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            TALLY["bad inputs tried"] += 1
            with pytest.raises(grpc.RpcError) as err:
                stub.ServerLive(ipb.ServerLiveRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            live = stub.ServerLive(
                ipb.ServerLiveRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
            assert live.live
    finally:
        server.stop(None)


def test_the_gateway_speaks_only_tls_when_configured(guarded):
    stack, _, _ = guarded
    port = stack.ports["gateway"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        TALLY["bad inputs tried"] += 1
        with pytest.raises(grpc.RpcError) as err:
            stub.ServerLive(ipb.ServerLiveRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_trainers_listen_on_loopback_only(guarded):
    stack, _, _ = guarded
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    for service in ("torch_trainer", "tf_trainer"):
        assert stack.address(service).startswith("127.0.0.1:")
        for port in (stack.ports[service], stack.link_ports[service]):  # gRPC, inference link
            listening = [line for line in out.splitlines() if f":{port} " in line]
            assert listening and all("127.0.0.1" in line.split()[3] for line in listening), port


# --- limits ---


def test_a_message_above_the_limit_is_resource_exhausted(guarded):
    _, client, _ = guarded
    big = np.zeros((400, 1, 28, 28), np.float32)  # 1.25 MiB, above the 1 MiB limit
    TALLY["bad inputs tried"] += 1
    with pytest.raises(grpc.RpcError) as err:
        client.inference.ModelInfer(infer_request("mlp-torch-onnx", big))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.inference.ModelInfer(infer_request("mlp-torch-onnx", IMAGE)).outputs


def test_nan_and_infinity_are_served_as_computed(guarded):
    _, client, _ = guarded
    odd = IMAGE.copy()
    odd[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    TALLY["bad inputs tried"] += 1
    logits = output_array(client.inference.ModelInfer(infer_request("mlp-tf-onnx", odd)), "logits")
    assert logits.shape == (1, 10) and np.isnan(logits).all()


def test_a_client_deadline_is_honoured_through_the_gateway(guarded):
    _, client, _ = guarded
    spec = tpb.JobSpec(framework="tf", model="mlp", epochs=300)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    TALLY["bad inputs tried"] += 1
    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job.id), timeout=1.0))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 5
    finally:
        client.trainer.CancelJob(tpb.CancelJobRequest(job_id=job.id))
    assert wait_for(client, job.id)[0].state == tpb.CANCELLED


def test_jobs_beyond_the_queue_limit_are_refused_in_order(guarded):
    _, client, _ = guarded
    spec = tpb.JobSpec(framework="tf", model="mlp", epochs=500)
    created = []
    try:
        # The first runs, the next two wait (the limit), the fourth is refused.
        created += client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
        _wait_epochs(client, created[0].id, 0, running=True)
        for _ in range(2):
            created += client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
        TALLY["bad inputs tried"] += 1
        with pytest.raises(grpc.RpcError) as err:
            client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        states = [client.trainer.GetJob(tpb.GetJobRequest(job_id=j.id)).state for j in created]
        assert states.count(tpb.RUNNING) <= 1 and states[1:] == [tpb.QUEUED, tpb.QUEUED]
    finally:
        for job in reversed(created):
            client.trainer.CancelJob(tpb.CancelJobRequest(job_id=job.id))
    for job in created:
        assert wait_for(client, job.id)[0].state == tpb.CANCELLED


# --- faults ---


def _wait_epochs(client, job_id, at_least, timeout_s=120, running=False):
    def progressed() -> tpb.Job | None:
        job = client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id))
        if len(job.epochs) >= at_least and (not running or job.state == tpb.RUNNING):
            return job
        return None

    done = f"{at_least} epochs done"
    what = f"job {job_id} running with {done}" if running else f"job {job_id} with {done}"
    return until(progressed, what, timeout_s, poll_s=0.1)


def _wait_for_trainer(client, job_id, timeout_s=60):
    """The gateway reconnects by itself; wait until the restarted trainer answers through it."""
    last_error = ""

    def answered() -> tpb.Job | None:
        nonlocal last_error
        try:
            return client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id), timeout=5)
        except grpc.RpcError as exc:  # not reconnected yet: the gateway's channel backs off
            last_error = f"last error: {exc.code()} {exc.details()}"
            return None

    return until(
        answered,
        "the restarted trainer to answer through the gateway",
        timeout_s,
        poll_s=0.3,
        on_timeout=lambda: last_error,
    )


def test_a_killed_trainer_reports_its_running_job_failed(guarded):
    stack, client, _ = guarded
    spec = tpb.JobSpec(framework="torch", model="mlp", epochs=300)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    _wait_epochs(client, job.id, 1)
    stack.kill("torch_trainer")
    TALLY["faults injected"] += 1
    stack.start_service("torch_trainer")
    after = _wait_for_trainer(client, job.id)
    assert after.state == tpb.FAILED and "stopped while this job was running" in after.error
    TALLY["faults survived"] += 1


def test_a_killed_trainer_resumes_a_resumable_job_from_its_checkpoint(guarded):
    stack, client, settings = guarded
    spec = tpb.JobSpec(framework="torch", model="mlp", epochs=12, resume=True)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    before = _wait_epochs(client, job.id, 3)
    stack.kill("torch_trainer")
    TALLY["faults injected"] += 1
    stack.start_service("torch_trainer")
    _wait_for_trainer(client, job.id)
    final, _ = wait_for(client, job.id)
    assert final.state == tpb.SUCCEEDED, final.error
    assert [e.epoch for e in final.epochs] == list(range(1, 13))
    # The epochs finished before the crash were kept, not trained again.
    kept = len(before.epochs)
    assert [e.train_loss for e in final.epochs[:kept]] == [e.train_loss for e in before.epochs]
    assert not (settings.home / "checkpoints" / job.id).exists()
    TALLY["faults survived"] += 1


def test_sigterm_interrupts_the_running_job_and_exits_within_the_grace(guarded):
    stack, client, _ = guarded
    spec = tpb.JobSpec(framework="tf", model="mlp", epochs=300)
    (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    _wait_epochs(client, job.id, 1)
    start = time.monotonic()
    stack.stop_service("tf_trainer")  # SIGTERM, then waits
    TALLY["faults injected"] += 1
    assert time.monotonic() - start < 15
    stack.start_service("tf_trainer")
    after = _wait_for_trainer(client, job.id)
    assert after.state == tpb.FAILED and "interrupted" in after.error
    TALLY["faults survived"] += 1


def test_a_trainer_killed_mid_export_leaves_nothing_half_written(guarded):
    stack, client, settings = guarded
    repository = settings.model_repository
    # The trainer's exports stop for good before they publish: the kill lands mid-export, always.
    stack.extra_env[FAILPOINT] = "before-publish"
    try:
        stack.restart("torch_trainer")
        spec = tpb.JobSpec(
            framework="torch", model="cnn3", epochs=1, train_samples=16, batch_size=16
        )
        (job,) = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec), timeout=30).jobs
        until(
            lambda: list(repository.glob("cnn3-torch-*/.staging-*")),
            "the export being written",
            180,
        )
    finally:
        del stack.extra_env[FAILPOINT]
    stack.kill("torch_trainer")
    TALLY["faults injected"] += 1
    assert list(repository.glob("cnn3-torch-*/.staging-*"))  # the half-written export
    stack.start_service("torch_trainer")
    assert not list(repository.glob("*/.staging-*"))  # removed at start, never listed
    after = _wait_for_trainer(client, job.id)
    assert after.state == tpb.FAILED
    index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest())
    for model in index.models:
        assert model.state == "READY", model
        info = ModelRepository(repository).info(model.name, int(model.version))
        assert (repository / model.name / model.version / info.filename).exists()
        reply = client.inference.ModelMetadata(ipb.ModelMetadataRequest(name=model.name))
        assert reply.name == model.name
    TALLY["faults survived"] += 1


def test_a_trainer_killed_under_load_costs_only_its_own_models(guarded):
    stack, client, _ = guarded
    image = load_dataset("mnist-5k").test.x[:1]
    results = {"mlp-torch-onnx": [], "mlp-tf-onnx": []}
    stop = threading.Event()

    def hammer(model):
        request = infer_request(model, image)
        while not stop.is_set():
            start = time.monotonic()
            try:
                client.inference.ModelInfer(request, timeout=10)
                results[model].append(("OK", time.monotonic() - start))
            except grpc.RpcError as exc:
                results[model].append((exc.code().name, time.monotonic() - start))

    def served(model: str, since: int = 0) -> int:
        return sum(code == "OK" for code, _ in results[model][since:])

    with futures.ThreadPoolExecutor(8) as pool:
        for i in range(8):
            pool.submit(hammer, list(results)[i % 2])
        until(lambda: min(served(m) for m in results) >= 20, "load on both models", 30)
        stack.kill("tf_trainer")
        TALLY["faults injected"] += 1
        until(
            lambda: any(code != "OK" for code, _ in results["mlp-tf-onnx"]),
            "the killed trainer's model to fail",
            30,
        )
        torch_before = len(results["mlp-torch-onnx"])
        # The other trainer's model is served while this one is down.
        until(
            lambda: served("mlp-torch-onnx", torch_before) >= 20,
            "the other trainer's model to be served meanwhile",
            30,
        )
        stack.start_service("tf_trainer")
        restarted = len(results["mlp-tf-onnx"])
        # the gateway's channel reconnects by itself
        until(lambda: served("mlp-tf-onnx", restarted) >= 1, "the model to come back", 15)
        back = len(results["mlp-tf-onnx"])
        until(lambda: served("mlp-tf-onnx", back) >= 20, "the model to be served steadily", 30)
        stop.set()
    torch_codes = {code for code, _ in results["mlp-torch-onnx"]}
    tf_codes = [code for code, _ in results["mlp-tf-onnx"]]
    assert torch_codes == {"OK"}, torch_codes  # the other trainer's model never failed
    assert set(tf_codes) <= {"OK", "UNAVAILABLE"} and "UNAVAILABLE" in tf_codes
    assert max(t for _, t in results["mlp-tf-onnx"]) < 10  # bounded: no hang
    assert tf_codes[-1] == "OK"  # served again, with no restart of the gateway
    TALLY["faults survived"] += 1
    TALLY["requests served under fault"] += sum(
        code == "OK" for r in results.values() for code, _ in r
    )
