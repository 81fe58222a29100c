"""The images built by a real builder and the compose stack run from deploy/: opt-in, slow (see README).

TWINBENCH_CONTAINER_TESTS=1 runs it where docker (with Compose) or podman (with podman-compose)
works and skips it elsewhere; =required makes that skip a failure. It builds every image
(`deploy/build-images.sh`, DEVICE=cpu), brings the stack up from deploy/docker-compose.yml with the
CPU override under a project of its own, runs `twinbench compare` against the published gateway
port, crashes the torch trainer's process inside its container, and takes the stack down with its
volumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import jsonschema
import numpy as np
import pytest

from tests_support import until
from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.config import load_settings
from twinbench.data.datasets import load_dataset
from twinbench.experiments.results import SCHEMA_FILE
from twinbench.rpc.channel import Client, is_serving
from twinbench.serving.tensors import infer_request, output_array

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
COMPOSE_CPU = ROOT / "deploy" / "docker-compose.cpu.yml"
ARTIFACTS = ROOT / "test-artifacts" / "containers"
TRAINERS = ("torch_trainer", "tf_trainer")
MODELS = {
    "torch_trainer": ("lenet5-torch-torchscript", "lenet5-torch-onnx"),
    "tf_trainer": ("lenet5-tf-savedmodel", "lenet5-tf-onnx"),
}
MODE = os.environ.get("TWINBENCH_CONTAINER_TESTS", "")
# Each check starts an engine command (`exec` of a health check, `inspect`): once a second is plenty.
CONTAINER_POLL_S = 1.0

# Finds the service's own process (`python -m services.<name>`) and kills it as a crash would: from
# inside the container, so the engine does not take it for a stop it was asked to make.
CRASH = """
import os, signal, sys
target = [b"-m", sys.argv[1].encode()]  # python -m <service>, not the init that started it
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")[:-1]
    except OSError:
        continue
    if len(argv) == 3 and os.path.basename(argv[0]).startswith(b"python") and argv[1:] == target:
        if pid == "1":
            sys.exit("the service is PID 1, which ignores a kill from inside (compose: init: true)")
        os.kill(int(pid), signal.SIGKILL)
        print(pid)
        break
else:
    sys.exit(f"no process runs {sys.argv[1]}")
"""

TIMINGS: dict[str, float] = {}
NOTES: list[str] = []


def unavailable(why: str):
    if MODE == "required":
        pytest.fail(why)
    pytest.skip(why)


def run(cmd: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
    )
    return done


def working_engine() -> str | None:
    wanted = os.environ.get("CONTAINER_BUILDER")
    for engine in [wanted] if wanted else ["docker", "podman"]:
        ok = (
            shutil.which(engine)
            and subprocess.run([engine, "info"], capture_output=True).returncode == 0
        )
        if ok:
            return engine
    return None


def compose_command(engine: str) -> list[str] | None:
    if engine == "docker":
        ok = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
        return ["docker", "compose"] if ok else None
    found = shutil.which("podman-compose") or shutil.which(
        "podman-compose", path=str(Path(sys.prefix) / "bin")
    )
    return [found] if found else None


def podman_compose_version(program: str) -> tuple[int, ...]:
    out = run([program, "--version"], 60).stdout  # "podman-compose version 1.6.0", then podman's
    match = re.search(r"podman-compose version (\d+)\.(\d+)", out)
    return tuple(int(n) for n in match.groups()) if match else (0,)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project: the containers of its services, their logs, calls into them."""

    def __init__(self, engine: str, compose: list[str], project: str, port: int) -> None:
        self.engine, self.project, self.port = engine, project, port
        self.compose = [*compose, "-p", project, "-f", str(COMPOSE), "-f", str(COMPOSE_CPU)]
        self.env = {**os.environ, "TWINBENCH_GATEWAY_PORT": str(port)}
        self.gateway = f"127.0.0.1:{port}"

    def up(self) -> None:
        run([*self.compose, "up", "-d"], 600, env=self.env, cwd=ROOT)

    def down(self) -> None:
        subprocess.run(
            [*self.compose, "down", "-v"], capture_output=True, timeout=300, env=self.env, cwd=ROOT
        )

    def container(self, service: str) -> str:
        labels = [
            f"label=com.docker.compose.project={self.project}",
            f"label=com.docker.compose.service={service}",
        ]
        args = [a for label in labels for a in ("--filter", label)]
        ids = run([self.engine, "ps", "-a", "-q", *args], 60).stdout.split()
        assert len(ids) == 1, f"{service}: expected one container, found {ids}"
        return ids[0]

    def inspect(self, service: str, template: str) -> str:
        return run(
            [self.engine, "inspect", "--format", template, self.container(service)], 60
        ).stdout.strip()

    def exec(self, service: str, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.engine, "exec", self.container(service), *cmd],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def healthy(self, service: str) -> bool:
        """The service's gRPC health check answers SERVING (the trainers are reachable only inside)."""
        if service == "gateway":
            return is_serving(self.gateway, timeout_s=3.0)
        return self.exec(service, "python", "-m", "twinbench.rpc.healthcheck").returncode == 0

    def logs(self) -> str:
        """Each service's last lines, kept under test-artifacts/ and returned for a failure's message."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tails = []
        for service in ("gateway", *TRAINERS):
            try:
                done = subprocess.run(
                    [self.engine, "logs", self.container(service)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            except AssertionError as e:
                tails.append(f"--- {service}: {e}")
                continue
            text = done.stdout + done.stderr
            (ARTIFACTS / f"{service}.log").write_text(text)
            tails.append(f"--- {service} (last lines)\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(tails)


def not_exercised(engine: str) -> list[str]:
    """What this run leaves out of the compose files, said precisely; the rest runs as written."""
    notes = ["the GPU reservations (the CPU override removes them with !reset)"]
    if engine == "podman":
        notes.append(
            "the HEALTHCHECKs and depends_on: service_healthy (podman runs HEALTHCHECKs only from "
            "systemd timers, and podman-compose ignores health conditions with podman before 4.6): "
            "the gateway starts at once and finds each trainer when it comes up"
        )
    return [f"not exercised: {note}" for note in notes]


@pytest.fixture(scope="module")
def stack():
    if MODE not in ("1", "on", "required"):
        pytest.skip(
            "opt-in: TWINBENCH_CONTAINER_TESTS=1 (or =required) builds the images and runs the stack"
        )
    engine = working_engine()
    if engine is None:
        unavailable("no working container engine (docker with its daemon, or podman)")
    compose = compose_command(engine)
    if compose is None:
        unavailable(
            f"no compose for {engine}: `docker compose` (Compose v2) or `pip install podman-compose`"
        )
    if engine == "podman" and podman_compose_version(compose[0]) < (1, 4):
        unavailable(
            "podman-compose before 1.4 cannot read the CPU override's !reset: pip install -U"
        )
    NOTES.extend(not_exercised(engine))

    start = time.monotonic()
    done = run(
        ["deploy/build-images.sh"],
        7200,
        cwd=ROOT,
        env={**os.environ, "DEVICE": "cpu", "CONTAINER_BUILDER": engine},
    )
    TIMINGS["build the images (layers in the builder's cache are reused)"] = (
        time.monotonic() - start
    )
    print(
        "\n"
        + "\n".join(
            line
            for line in done.stdout.splitlines()
            if line.startswith(("build-images", "  twinbench/"))
        )
    )

    s = Stack(engine, compose, f"twinbench-test-{os.getpid()}", free_port())
    start = time.monotonic()
    try:
        s.up()
        TIMINGS["compose up"] = time.monotonic() - start
        for service in ("gateway", *TRAINERS):
            until(
                lambda service=service: s.healthy(service),
                f"{service} to be healthy",
                300,
                CONTAINER_POLL_S,
                s.logs,
            )
        TIMINGS["compose up until every service answers its health check"] = (
            time.monotonic() - start
        )
        yield s
    finally:
        start = time.monotonic()
        s.logs()  # kept under test-artifacts/containers/, pass or fail
        s.down()
        TIMINGS["compose down -v"] = time.monotonic() - start
        print(
            "\n"
            + "\n".join([f"{what}: {seconds:.0f} s" for what, seconds in TIMINGS.items()] + NOTES)
        )


@pytest.fixture(scope="module")
def client(stack):
    c = Client(stack.gateway, load_settings({}))
    yield c
    c.close()


@pytest.fixture(scope="module")
def report(stack, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    args = ["--gateway", stack.gateway, "compare", "--epochs", "2", "--train-samples", "512",
            "--repeats", "2", "--users", "2", "--duration", "3s", "--rounds", "2",
            "--reports", str(reports)]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "twinbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    TIMINGS["twinbench compare against the containers"] = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:] + stack.logs()
    lines = done.stdout.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("arm ")), 0)
    print("\n" + "\n".join(lines[first:]))  # the summary tables and the verdict
    (directory,) = reports.iterdir()
    return directory


def sample() -> np.ndarray:
    return load_dataset("mnist-5k").test.x[:1]


def logits(client: Client, model: str) -> np.ndarray:
    return output_array(
        client.inference.ModelInfer(infer_request(model, sample()), timeout=10), "logits"
    )


def test_compare_against_the_published_gateway_writes_the_report(report):
    results = json.loads((report / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert (report / "report.html").stat().st_size > 0 and "## Verdict" in (
        report / "report.md"
    ).read_text()
    for framework in ("torch", "tf"):
        for trained in results["training"][framework]["repeats"]:
            assert trained["state"] == "succeeded" and trained["device"] == "cpu", trained
    served = {s["model_name"]: s for s in results["serving"]["models"]}
    assert set(served) == {m for models in MODELS.values() for m in models}
    assert all(s["requests"] > 0 and s["failures"] == 0 for s in served.values()), served


def test_the_four_models_are_served_from_the_containers(client, report):
    index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest(ready=True), timeout=10)
    ready = {m.name for m in index.models if m.state == "READY"}
    assert ready >= {m for models in MODELS.values() for m in models}
    for models in MODELS.values():
        for model in models:
            out = logits(client, model)
            assert out.shape == (1, 10) and np.isfinite(out).all()


def test_a_crashed_trainer_is_restarted_while_the_other_serves_on(stack, client, report):
    before = {m: logits(client, m) for models in MODELS.values() for m in models}
    restarts = int(stack.inspect("torch_trainer", "{{.RestartCount}}"))
    started = stack.inspect("torch_trainer", "{{.State.StartedAt}}")

    crash = stack.exec("torch_trainer", "python", "-c", CRASH, "services.torch_trainer")
    assert crash.returncode == 0, crash.stdout + crash.stderr
    start = time.monotonic()

    served = {"tf": 0, "torch": 0, "torch unavailable": 0}

    def recovered() -> bool:
        # The tf trainer's models must answer every time while the torch trainer is away.
        for model in MODELS["tf_trainer"]:
            np.testing.assert_allclose(logits(client, model), before[model], rtol=1e-5, atol=1e-6)
            served["tf"] += 1
        for model in MODELS["torch_trainer"]:
            try:
                logits(client, model)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{model}: {e.code()} {e.details()}"
                served["torch unavailable"] += 1
                return False
            served["torch"] += 1
        restarted = int(stack.inspect("torch_trainer", "{{.RestartCount}}")) > restarts or (
            stack.inspect("torch_trainer", "{{.State.StartedAt}}") != started
        )
        return restarted and stack.healthy("torch_trainer")

    until(
        recovered,
        "the torch trainer restarted by its policy and serving again",
        300,
        CONTAINER_POLL_S,
        stack.logs,
    )
    TIMINGS["crash of the torch trainer until its models serve again"] = time.monotonic() - start
    assert stack.inspect("torch_trainer", "{{.State.Status}}") == "running"
    assert served["tf"] > 0, served
    NOTES.append(f"during the torch trainer's restart: {served}")

    # The same exports, reloaded from the volume, give the same answers; the job store survived too.
    for model in MODELS["torch_trainer"]:
        np.testing.assert_allclose(logits(client, model), before[model], rtol=1e-5, atol=1e-6)
    training = json.loads((report / "results.json").read_text())["training"]
    job_id = training["torch"]["repeats"][-1]["job_id"]  # the repeat whose exports are served
    job = client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id), timeout=10)
    assert tpb.JobState.Name(job.state) == "SUCCEEDED"
    assert all(stack.healthy(service) for service in ("gateway", *TRAINERS))
