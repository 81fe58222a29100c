"""JAX's trainer side: every workload trains, exports reload and agree, checkpoints resume, what
JAX cannot do is refused, and the service trains and serves for real."""

from __future__ import annotations

import numpy as np
import pytest

from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import FailedPrecondition
from twinbench.jobs.request import job_model, resolve_spec
from twinbench.models.catalogue import MODELS
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.imagenet import ARCHITECTURES
from twinbench.models.tasks import FIRST_TOKEN

jax = pytest.importorskip("jax")

from twinbench.frameworks.jax.framework import JaxFramework  # noqa: E402

pytestmark = pytest.mark.integration  # builds, compiles and runs JAX models

# The ImageNet models at a fraction of their width and size: every layer kind, seconds to compile.
SMALL = {name: {"width": 0.125, "image_size": 32} for name in (*ARCHITECTURES, "vgg16_finetune")}
SMALL["alexnet"] = {"width": 0.125, "image_size": 64}  # its stride-4 stem needs more pixels
SMALL["cnn3"] = {}
SUPERVISED = sorted((set(MODELS) | set(SMALL)) - {"dqn_cartpole", "vgg16"})


def job(model: str, **fields) -> tpb.JobSpec:
    return resolve_spec(tpb.JobSpec(framework="jax", model=model, seed=7, **fields))


def batch_for(declared, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and labels of the model's task."""
    rng = np.random.default_rng(seed)
    if isinstance(declared, NeuMF):
        x = np.stack([rng.integers(0, declared.users, rows), rng.integers(0, declared.items, rows)])
        return x.T.copy(), rng.integers(0, 2, rows)
    if isinstance(declared, GNMT):
        ids = rng.integers(FIRST_TOKEN, declared.vocab, (rows, declared.source_length * 2))
        return ids, rng.integers(FIRST_TOKEN, declared.vocab, (rows, declared.target_length))
    x = rng.random((rows, *declared.input_shape), dtype=np.float32)
    return x, rng.integers(0, declared.num_classes, rows)


@pytest.fixture
def weights_home(tmp_path, monkeypatch):
    """A home whose data folder holds a small VGG16 base in torchvision's format."""
    from twinbench.data.pretrained import make_random_weights_file
    from twinbench.models.catalogue import get_model_spec

    monkeypatch.setenv("TWINBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("TWINBENCH_DATA", raising=False)
    small = get_model_spec("vgg16_finetune", **SMALL["vgg16_finetune"])
    make_random_weights_file(small, tmp_path / "data" / "ft" / "vgg16-small.pth", seed=5)
    return "ft/vgg16-small.pth"


def session_for(model: str, weights: str | None = None, **fields):
    knobs = SMALL.get(model, {})
    if weights:
        fields["pretrained_weights"] = weights
    spec = job(model, batch_size=8, **knobs, **fields)
    declared = job_model(spec)
    return JaxFramework().new_session(spec, declared, None), declared


@pytest.mark.parametrize("model", SUPERVISED)
def test_every_supervised_workload_trains_and_its_loss_falls(model, weights_home):
    session, declared = session_for(
        model,
        weights_home if model == "vgg16_finetune" else None,
        optimizer=tpb.Optimizer(learning_rate=0.01),
    )
    x, y = batch_for(declared, 8)
    x = session.prepare(x)
    losses = []
    for _ in range(6):
        loss, hits = session.train_batch(x, y)
        losses.append(float(loss))
        assert 0 <= int(hits) <= y.size
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert session.parameter_count > 0 and session.device_name == "cpu"
    assert session.peak_gpu_bytes() == 0
    assert session.predict(x[:3]).shape[0] == 3
    assert "jax.jit" in session.fairness()["compilation"]
    if model == "vgg16_finetune":  # the frozen base never moved, and is not counted
        from twinbench.data.pretrained import pretrained_base

        assert session.base_max_change(pretrained_base(session.spec, declared)) == 0.0
        base = sum(a.size for arrays in pretrained_base(session.spec, declared) for a in arrays)
        assert session.parameter_count == declared.parameter_count() - base


@pytest.mark.parametrize("model", ["ncf", "gnmt"])
def test_id_models_train_and_their_loss_falls(model):
    spec = job(model, width=0.03, batch_size=8, optimizer=tpb.Optimizer(learning_rate=0.01))
    declared = job_model(spec)
    session = JaxFramework().new_session(spec, declared, None)
    x, y = batch_for(declared, 8)
    losses = [float(session.train_batch(x, y)[0]) for _ in range(5)]
    assert losses[-1] < losses[0], losses
    one_bias = isinstance(declared, GNMT)  # an LSTM keeps one bias vector, as in Keras
    expected = declared.parameter_count(lstm_biases=1) if one_bias else declared.parameter_count()
    assert session.parameter_count == expected


def test_the_q_network_fits_its_targets():
    spec = resolve_spec(tpb.JobSpec(framework="jax", model="dqn_cartpole", seed=7))
    session = JaxFramework().new_rl_session(spec, MODELS["dqn_cartpole"])
    rng = np.random.default_rng(0)
    states = rng.normal(size=(64, 4)).astype(np.float32)
    actions, targets = rng.integers(0, 2, 64), rng.normal(size=64).astype(np.float32) * 3
    before = session.target_q_values(states)
    losses = [session.train_step(states, actions, targets) for _ in range(30)]
    assert losses[-1] < 0.9 * losses[0], losses  # Adam at lr 0.0005: steady, not fast
    np.testing.assert_array_equal(session.target_q_values(states), before)  # not yet copied
    session.update_target()
    np.testing.assert_array_equal(session.target_q_values(states), session.q_values(states))


# LeNet-5; MobileNetV2 for batch norm, depthwise convolutions and residual adds (each of which
# jax2onnx's layer plugins could get wrong); NCF's INT64 ids; GNMT's LSTMs, a scan.
@pytest.mark.parametrize("model", ["lenet5", "mobilenet_v2", "ncf", "gnmt"])
def test_both_exports_reload_and_agree_with_the_live_model_at_two_batch_sizes(model, tmp_path):
    framework = JaxFramework()
    fields = {"width": 0.03} if model in ("ncf", "gnmt") else SMALL.get(model, {})
    spec = job(model, **fields)
    declared = job_model(spec)
    session = framework.new_session(spec, declared, None)
    x, y = batch_for(declared, 7)
    session.train_batch(session.prepare(x), y)
    for fmt in ("stablehlo", "onnx"):
        session.export(fmt, tmp_path / fmt)
        runtime = framework.loaders[fmt](tmp_path / fmt, None)
        for rows in (3, 7):  # one export, any batch size: a symbolic batch dimension
            served = runtime.infer(*session.task.split(x[:rows]))
            expected = session.predict(session.prepare(x[:rows]))
            assert served.shape == expected.shape and served.shape[0] == rows
            np.testing.assert_allclose(served, expected, atol=1e-5)
    # The weights are inputs of the program, saved beside it, not constants inside it.
    from twinbench.frameworks.jax.export import PROGRAM_FILE, WEIGHTS_FILE

    with np.load(tmp_path / "stablehlo" / WEIGHTS_FILE) as saved:
        assert sum(saved[k].size for k in saved.files) >= session.parameter_count
    assert (tmp_path / "stablehlo" / PROGRAM_FILE).stat().st_size < session.parameter_count * 4


def test_a_checkpoint_resumes_where_it_left(tmp_path):
    framework = JaxFramework()
    spec = job("resnet50", width=0.125, image_size=32, batch_size=8)
    declared = job_model(spec)
    x, y = batch_for(declared, 8)
    first = framework.new_session(spec, declared, None)
    x = first.prepare(x)
    first.train_batch(x, y)
    first.save_checkpoint(tmp_path / "checkpoint.npz")
    resumed = framework.new_session(spec, declared, None)  # fresh weights: the shared init
    assert not np.allclose(resumed.predict(x), first.predict(x))
    resumed.load_checkpoint(tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(resumed.predict(x), first.predict(x))  # batch norm's too
    # The optimizer's state came back too: the next step is the same step.
    assert float(resumed.train_batch(x, y)[0]) == float(first.train_batch(x, y)[0])
    np.testing.assert_array_equal(resumed.predict(x), first.predict(x))


def test_a_data_parallel_jax_job_is_refused_with_the_gap_stated():
    with pytest.raises(FailedPrecondition, match="jax trainer trains on one process"):
        resolve_spec(tpb.JobSpec(framework="jax", model="lenet5", workers=2))
    assert JaxFramework.distributed is None
    resolve_spec(tpb.JobSpec(framework="torch", model="lenet5", workers=2))  # not the others


def test_threads_recorded_are_the_cpu_set_xla_runs_on():
    import os

    assert JaxFramework().set_threads(1, 1) == (len(os.sched_getaffinity(0)), 1)


def test_the_trainer_service_trains_and_serves_both_exports(tmp_path):
    """`python -m services.jax_trainer` for real: one epoch of LeNet-5 on the embedded data,
    then both exports through its own inference API (KServe V2)."""
    from conftest import wait_for
    from twinbench.api import inference_pb2 as ipb
    from twinbench.client.stack import LocalStack
    from twinbench.config import load_settings
    from twinbench.data.datasets import load_dataset
    from twinbench.rpc.channel import Client
    from twinbench.serving.tensors import infer_request, output_array

    env = {"TWINBENCH_TRAIN_THREADS": "2", "TWINBENCH_TRAIN_INTEROP_THREADS": "1"}
    settings = load_settings({"TWINBENCH_HOME": str(tmp_path), **env})
    ports = {"gateway": 0, "jax_trainer": 0}
    with LocalStack(settings, ports, env=env, frameworks=("jax",)) as stack:
        client = Client(stack.address("jax_trainer"), settings)
        try:
            spec = tpb.JobSpec(
                framework="jax", model="lenet5", epochs=1, train_samples=512, batch_size=32
            )
            created = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs[0]
            done, _ = wait_for(client, created.id)
            assert done.state == tpb.SUCCEEDED, done.error
            assert [e.model_name for e in done.exports] == [
                "lenet5-jax-stablehlo",
                "lenet5-jax-onnx",
            ]
            assert done.fairness["compilation"].startswith("jax.jit")
            batch = load_dataset("mnist-5k").test.x[:5]
            replies = []
            for export in done.exports:
                request = infer_request(export.model_name, batch, version=export.version)
                replies.append(output_array(client.inference.ModelInfer(request), "logits"))
            assert replies[0].shape == (5, 10)
            np.testing.assert_allclose(replies[0], replies[1], atol=1e-4)
            index = client.inference.RepositoryIndex(ipb.RepositoryIndexRequest())
            assert {"lenet5-jax-stablehlo", "lenet5-jax-onnx"} <= {m.name for m in index.models}
        finally:
            client.close()
