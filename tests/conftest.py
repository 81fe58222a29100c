"""Fixtures: a real local stack (three services on free loopback ports) with its own state folder."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Some tests hold both frameworks in one process (the services never do). PyTorch's optimizers
# import torch._dynamo lazily, and that import crashes once TensorFlow's native libraries are
# loaded; importing it first avoids the clash.
import pytest  # noqa: E402
import torch._dynamo  # noqa: E402, F401

from twinbench.api import trainer_pb2 as tpb  # noqa: E402
from twinbench.client.stack import LocalStack  # noqa: E402
from twinbench.config import load_settings  # noqa: E402
from twinbench.rpc.channel import Client  # noqa: E402

# Small enough to run in seconds, large enough to learn something.
TINY = dict(epochs=2, train_samples=1024, batch_size=32)


@pytest.fixture(scope="session")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("twinbench-home")


# Two models are served with dynamic batching, so every test that infers on them exercises it.
BATCHED = "lenet5-torch-onnx,lenet5-tf-savedmodel"
# Training threads set apart from serving's one thread, whatever this machine's CPU count.
STACK_ENV = {
    "TWINBENCH_DYNAMIC_BATCHING": BATCHED,
    "TWINBENCH_TRAIN_THREADS": "2",
    "TWINBENCH_TRAIN_INTEROP_THREADS": "2",
}


@pytest.fixture(scope="session")
def settings(home):
    return load_settings({"TWINBENCH_HOME": str(home), **STACK_ENV})


@pytest.fixture(scope="session")
def stack(settings):
    ports = {"gateway": 0, "torch_trainer": 0, "tf_trainer": 0}
    with LocalStack(settings, ports, env=STACK_ENV) as s:
        yield s


@pytest.fixture(scope="session")
def client(stack, settings):
    c = Client(stack.gateway_address, settings)
    yield c
    c.close()


def wait_for(client: Client, job_id: str, timeout_s: float = 300) -> tpb.Job:
    """Follows the job's stream to its end; returns the final record and the events seen."""
    events = list(client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job_id), timeout=timeout_s))
    return client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id)), events


@pytest.fixture(scope="session")
def trained(client):
    """One tiny LeNet-5 job per framework, started together through the gateway."""
    spec = tpb.JobSpec(framework="both", model="lenet5", **TINY)
    jobs = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    with ThreadPoolExecutor() as pool:  # watch both from the start: the jobs run side by side
        results = pool.map(lambda job: wait_for(client, job.id), jobs)
        return {job.spec.framework: result for job, result in zip(jobs, results, strict=True)}


def pytest_terminal_summary(terminalreporter):
    from tally import TALLY

    if TALLY:
        terminalreporter.section("reliability")
        for key in sorted(TALLY):
            terminalreporter.write_line(f"{key}: {TALLY[key]}")


def pytest_collection_modifyitems(items):
    """Every test that runs on the real services is an integration test: `pytest -m "not
    integration"` runs the fast unit tests alone (`make test` runs everything)."""
    for item in items:
        if "stack" in item.fixturenames:
            item.add_marker(pytest.mark.integration)
