"""Every field of a job request checked before the job is accepted: each numeric field against its
stated range (INVALID_ARGUMENT), and what the trainer's hardware cannot run (FAILED_PRECONDITION),
through real gRPC servers on loopback."""

import math
import re
from pathlib import Path

import grpc
import pytest

from twinbench.api import trainer_pb2 as tpb
from twinbench.api import trainer_pb2_grpc
from twinbench.config import load_settings
from twinbench.errors import FailedPrecondition, InvalidArgument
from twinbench.gateway.router import Gateway
from twinbench.gateway.servicer import GatewayTrainerServicer
from twinbench.jobs import hardware as hw
from twinbench.jobs.hardware import Hardware, gpu_count, probe_hardware
from twinbench.jobs.request import (
    MODEL_RANGES,
    RANGES,
    Range,
    check_ranges,
    check_runnable,
    resolve_spec,
)
from twinbench.rpc.server import create_server
from twinbench.trainer.queue import JobManager, JobStore
from twinbench.trainer.servicer import TrainerServicer

PROTO = Path(__file__).parents[1] / "protos" / "twinbench" / "api" / "trainer.proto"
NUMERIC = {
    tpb.JobSpec.DESCRIPTOR.fields_by_name["epochs"].type,  # int32
    tpb.JobSpec.DESCRIPTOR.fields_by_name["seed"].type,  # int64
    tpb.JobSpec.DESCRIPTOR.fields_by_name["width"].type,  # double
}
# The trainers of the loopback tests: what this project's CPU-only machines look like at worst,
# and one with more CPUs than its TWINBENCH_MAX_WORKERS allows workers.
HARDWARE = {
    "torch": Hardware(cpus=2, cpu_bf16=False, gpus=0),
    "tf": Hardware(cpus=8, cpu_bf16=False, gpus=0, max_workers=2),
}
# The requests a new user found accepted though wrong, and what each must be refused with.
NAMED_BAD = [
    ("target accuracy 7.0", dict(target_accuracy=7.0), "target_accuracy must be in [0, 1]"),
    ("image size 0", dict(model="resnet50", image_size=0), "image_size must be 16..1024"),
    ("workers 0", dict(workers=0), "workers must be 1..64"),
    ("workers -1", dict(workers=-1), "workers must be 1..64"),
    ("devices per worker -3", dict(devices_per_worker=-3), "devices_per_worker must be 1..16"),
]
PRECONDITIONS = [
    ("mixed precision, no bfloat16, no GPU", dict(precision="mixed"), "no bfloat16 instructions"),
    ("cuda with no GPU", dict(device="cuda"), "device 'cuda' was asked for"),
    ("more workers than CPUs", dict(workers=3, batch_size=64), "more than the 2 CPU(s)"),
    (
        "more workers than TWINBENCH_MAX_WORKERS",
        dict(framework="tf", workers=3, batch_size=64),
        "TWINBENCH_MAX_WORKERS=2",
    ),
    ("GPUs per worker with no GPU", dict(devices_per_worker=2), "trains each worker on 2 GPUs"),
]


def spec(**fields) -> tpb.JobSpec:
    return tpb.JobSpec(**{"framework": "torch", "model": "mlp", **fields})


# --- the ranges ---


@pytest.mark.parametrize("_, fields, message", NAMED_BAD, ids=[n for n, _, _ in NAMED_BAD])
def test_each_named_bad_request_is_refused_naming_the_field_and_its_range(_, fields, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        resolve_spec(spec(**fields))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(seed=2**32), "seed must be 0..4294967295"),  # Keras would fail on it as the job ran
        (dict(seed=-1), "seed must be 0..4294967295"),
        (dict(epochs=0), "epochs must be 1..10000"),
        (dict(batch_size=65_537), "batch_size must be 1..65536"),
        (dict(train_samples=0), "train_samples must be 1..2147483647"),
        (dict(warmup_steps=-1), "warmup_steps must be 0..1000000"),
        (dict(target_accuracy=-0.1), "target_accuracy must be in [0, 1]"),
        (dict(target_accuracy=math.nan), "target_accuracy must be in [0, 1]"),
        (dict(model="resnet50", width=0.0), "width must be in (0, 4]"),
        (dict(model="resnet50", width=math.inf), "width must be in (0, 4]"),
        (dict(model="resnet50", image_size=2000), "image_size must be 16..1024"),
        (dict(model="vgg16_finetune", width=2.0), "width must be in (0, 1] for vgg16_finetune"),
        (dict(model="vgg16_finetune", image_size=16), "image_size must be 32..1024 for vgg16"),
        (dict(model="ncf", width=1.5), "width must be in (0, 1] for ncf"),
        (dict(hidden_units=[10, 0, 10, 10]), "hidden_units must each be 1..65536"),
        (dict(model="dqn_cartpole", env_steps=0), "env_steps must be 1..10000000"),
        (dict(optimizer=tpb.Optimizer(learning_rate=0.0)), "optimizer.learning_rate must be in"),
        (dict(optimizer=tpb.Optimizer(momentum=-0.1)), "optimizer.momentum must be in [0, 1)"),
        (dict(optimizer=tpb.Optimizer(epsilon=1.0)), "optimizer.epsilon must be in (0, 1)"),
    ],
)
def test_other_fields_out_of_range_are_refused_too(fields, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        resolve_spec(spec(**fields))


def test_unset_takes_the_default_and_zero_is_a_value_where_the_range_has_it():
    """Every numeric field has presence: unset is the default, set (0 too) is checked. 0 stays
    a value where it is in the range: seed 0, no warm-up steps."""
    plain = resolve_spec(spec())
    assert not plain.HasField("workers") and not plain.HasField("devices_per_worker")
    assert not plain.HasField("image_size") and not plain.HasField("target_accuracy")
    assert plain.seed == 0 and plain.epochs == 21
    zeros = resolve_spec(spec(seed=0, warmup_steps=0, optimizer=tpb.Optimizer(momentum=0.0)))
    assert zeros.HasField("warmup_steps") and zeros.warmup_steps == 0
    assert zeros.optimizer.momentum == 0.0
    edges = resolve_spec(spec(seed=2**32 - 1, workers=1, devices_per_worker=1, target_accuracy=1))
    assert (edges.seed, edges.workers, edges.devices_per_worker) == (2**32 - 1, 1, 1)
    # A resolved record resolves to itself (a worker run by Kubernetes resolves it again).
    assert resolve_spec(edges) == edges and resolve_spec(plain) == plain


def test_what_a_worker_refused_only_as_it_ran_is_refused_at_creation():
    with pytest.raises(InvalidArgument, match="dataset mnist-5k has 1x28x28 images"):
        resolve_spec(spec(model="cnn3", dataset="mnist-5k"))
    with pytest.raises(InvalidArgument, match="for model ncf only"):
        resolve_spec(spec(dataset="ml-1m"))
    with pytest.raises(InvalidArgument, match="channels_last is not for ncf"):
        resolve_spec(spec(model="ncf", channels_last=True))
    with pytest.raises(InvalidArgument, match="vocabulary of 2 tokens"):
        resolve_spec(spec(model="gnmt", width=1e-6))


def test_every_numeric_field_has_a_range_stated_alike_in_the_proto():
    """The table is the one place in code; trainer.proto's comment on each field says the same
    range, narrower ones per model included."""
    numeric = {
        prefix + f.name
        for prefix, message in (("", tpb.JobSpec), ("optimizer.", tpb.Optimizer))
        for f in message.DESCRIPTOR.fields
        if f.type in NUMERIC
    }
    assert numeric == set(RANGES)
    comments = _field_comments(PROTO.read_text())
    for name, allowed in RANGES.items():
        comment = comments[name.split(".")[-1]]
        assert f"Range {allowed}" in comment, (name, comment)
    for (name, model), allowed in MODEL_RANGES.items():
        comment = comments[name]
        assert str(allowed) in comment and model.split("_")[0] in comment, (name, model)


def _field_comments(proto: str) -> dict[str, str]:
    """The comment of each field of JobSpec and Optimizer: the // lines right above it and the
    one after it on its line."""
    out: dict[str, str] = {}
    above: list[str] = []
    message = ""
    for line in proto.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            above.append(stripped[2:].strip())
            continue
        if opened := re.match(r"message (\w+) \{", stripped):
            message = opened.group(1)
        field = re.match(r"(?:optional |repeated )?\w+ (\w+) = \d+;\s*(?://(.*))?$", stripped)
        if field and message in ("JobSpec", "Optimizer"):
            out[field.group(1)] = " ".join([*above, (field.group(2) or "").strip()])
        above = []
    return out


def test_a_range_is_written_as_it_is_checked():
    assert str(Range(1, 64)) == "1..64" and 64 in Range(1, 64) and 65 not in Range(1, 64)
    unit = Range(0, 1, low_open=True, real=True)
    assert str(unit) == "(0, 1]" and 1.0 in unit and 0.0 not in unit and math.nan not in unit
    assert str(Range(0, 1, high_open=True, real=True)) == "[0, 1)"
    check_ranges(resolve_spec(spec()))  # the filled-in defaults hold to the table


# --- the hardware ---


def test_each_precondition_names_what_is_missing():
    for _, fields, message in PRECONDITIONS:
        resolved = resolve_spec(spec(**fields))
        with pytest.raises(FailedPrecondition, match=re.escape(message)):
            check_runnable(resolved, HARDWARE[resolved.framework])


def test_hardware_that_has_it_runs_the_same_requests():
    gpus = Hardware(cpus=8, cpu_bf16=False, gpus=4)
    for fields in (dict(precision="mixed"), dict(device="cuda"), dict(devices_per_worker=2),
                   dict(workers=2, devices_per_worker=2, batch_size=8)):  # fmt: skip
        check_runnable(resolve_spec(spec(**fields)), gpus)
    check_runnable(resolve_spec(spec(precision="mixed", device="cpu")), Hardware(2, True, 0))
    check_runnable(resolve_spec(spec(workers=3, batch_size=64)), Hardware(4, False, 0))
    # mixed on a CPU, asked for explicitly, needs the CPU's bfloat16 even with GPUs there
    with pytest.raises(FailedPrecondition, match="no bfloat16"):
        check_runnable(resolve_spec(spec(precision="mixed", device="cpu")), gpus)
    with pytest.raises(FailedPrecondition, match="8 replicas"):
        check_runnable(resolve_spec(spec(workers=4, devices_per_worker=2, batch_size=8)), gpus)


def test_one_worker_of_several_is_held_to_its_own_share():
    """A worker of a data-parallel job sees only its own GPUs (TensorFlow's workers get a slice
    of CUDA_VISIBLE_DEVICES) and shares the host with the others: it checks what it needs."""
    job = resolve_spec(spec(framework="tf", workers=2, devices_per_worker=2, batch_size=8))
    check_runnable(job, Hardware(cpus=8, cpu_bf16=False, gpus=4))
    check_runnable(job, Hardware(cpus=1, cpu_bf16=False, gpus=2), all_workers_here=False)
    with pytest.raises(FailedPrecondition, match="4 replicas"):
        check_runnable(job, Hardware(cpus=8, cpu_bf16=False, gpus=2))


def test_gpus_are_counted_from_device_files_and_cuda_visible_devices(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    assert gpu_count(tmp_path, {}) == 3
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": "2,0"}) == 2
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": "0,7,1"}) == 1  # CUDA stops at 7
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": "GPU-3f2a"}) == 1
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert gpu_count(tmp_path, {"CUDA_VISIBLE_DEVICES": "-1"}) == 0
    assert gpu_count(tmp_path / "missing", {}) == 0


def test_the_probe_reads_the_settings_and_a_bad_cpu_setting_refuses_every_job(monkeypatch):
    monkeypatch.setattr(hw, "cpu_has_bf16", lambda: False)
    probed = probe_hardware(load_settings({"TWINBENCH_MAX_WORKERS": "3"}))
    assert probed.max_workers == 3 and not probed.cpu_bf16 and probed.cpus >= 1
    assert probe_hardware(load_settings({})).max_workers == 0  # unset: no limit but the CPUs
    broken = probe_hardware(load_settings({"TWINBENCH_TRAIN_CPUS": "4096"}))
    assert broken.cpus == 0 and "TWINBENCH_TRAIN_CPUS=4096" in broken.problem
    with pytest.raises(FailedPrecondition, match="TWINBENCH_TRAIN_CPUS"):
        check_runnable(resolve_spec(spec()), broken)


# --- through real servers on loopback ---


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """Two trainers (job managers whose jobs never run) on HARDWARE, and a gateway."""
    home = tmp_path_factory.mktemp("requests-home")
    settings = load_settings({"TWINBENCH_HOME": str(home)})
    servers, ports = [], {}
    for framework in ("torch", "tf"):
        store = JobStore(home / f"{framework}.sqlite")
        manager = JobManager(framework, store, lambda job, ctx: None, 1000, HARDWARE[framework])
        server, port, _ = create_server("127.0.0.1:0", settings)
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(manager), server)
        server.start()
        servers.append(server)
        ports[framework] = port
    gateway_settings = load_settings(
        {
            "TWINBENCH_HOME": str(home),
            "TWINBENCH_TORCH_TRAINER": f"127.0.0.1:{ports['torch']}",
            "TWINBENCH_TF_TRAINER": f"127.0.0.1:{ports['tf']}",
        }
    )
    gateway = Gateway(gateway_settings)
    server, port, _ = create_server("127.0.0.1:0", gateway_settings)
    trainer_pb2_grpc.add_TrainerServicer_to_server(GatewayTrainerServicer(gateway), server)
    server.start()
    servers.append(server)
    channels = {
        "gateway": grpc.insecure_channel(f"127.0.0.1:{port}"),
        "torch": grpc.insecure_channel(f"127.0.0.1:{ports['torch']}"),
        "tf": grpc.insecure_channel(f"127.0.0.1:{ports['tf']}"),
    }
    stubs = {name: trainer_pb2_grpc.TrainerStub(c) for name, c in channels.items()}
    yield stubs
    for channel in channels.values():
        channel.close()
    for server in servers:
        server.stop(None)
    gateway.close()


def _stub(loopback, via: str, fields: dict):
    """The gateway, or the trainer of the request's framework itself."""
    return loopback["gateway"] if via == "gateway" else loopback[fields.get("framework", "torch")]


def _refusal(stub, fields: dict, framework: str = "torch") -> grpc.RpcError:
    request = tpb.CreateJobRequest(spec=spec(**{"framework": framework, **fields}))
    if "framework" in fields:
        request.spec.framework = fields["framework"]
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateJob(request, timeout=10)
    return refused.value


@pytest.mark.parametrize("via", ["gateway", "trainer"])
@pytest.mark.parametrize("_, fields, message", NAMED_BAD, ids=[n for n, _, _ in NAMED_BAD])
def test_named_bad_requests_get_invalid_argument_over_grpc(loopback, via, _, fields, message):
    error = _refusal(_stub(loopback, via, fields), fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


@pytest.mark.parametrize("via", ["gateway", "trainer"])
@pytest.mark.parametrize("_, fields, message", PRECONDITIONS, ids=[n for n, _, _ in PRECONDITIONS])
def test_what_the_trainer_cannot_run_gets_failed_precondition_over_grpc(
    loopback, via, _, fields, message
):
    error = _refusal(_stub(loopback, via, fields), fields)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in error.details()


def test_both_frameworks_at_the_gateway_are_refused_alike(loopback):
    for fields, code in ((dict(workers=0), grpc.StatusCode.INVALID_ARGUMENT),
                         (dict(device="cuda"), grpc.StatusCode.FAILED_PRECONDITION)):  # fmt: skip
        assert _refusal(loopback["gateway"], fields, framework="both").code() == code
    # and what this trainer can run is accepted, through the gateway, for both
    request = tpb.CreateJobRequest(spec=spec(framework="both", workers=2, batch_size=64))
    jobs = loopback["gateway"].CreateJob(request, timeout=10).jobs
    assert [j.spec.framework for j in jobs] == ["torch", "tf"]
    assert all(j.state == tpb.QUEUED and j.spec.workers == 2 for j in jobs)


@pytest.mark.integration
def test_the_real_services_refuse_the_named_requests(client):
    """The same through the real stack: its gateway (and front, where built) and its trainers,
    on this machine's hardware."""
    for _, fields, message in NAMED_BAD:
        error = _refusal(client.trainer, fields)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    if not gpu_count():
        error = _refusal(client.trainer, dict(device="cuda"), framework="both")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "device 'cuda' was asked for" in error.details()
