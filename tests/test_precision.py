"""Mixed precision: which 16-bit type a device gets, the refusal where it would be emulated, and
the bfloat16 step of both trainers."""

import grpc
import numpy as np
import pytest

from conftest import TINY, wait_for
from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import FailedPrecondition, InvalidArgument
from twinbench.jobs import precision
from twinbench.jobs.request import job_model, resolve_spec


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\nbugs\t: x\n")
    assert {"avx512f", "avx512_bf16", "sse2"} <= precision.cpu_flags(cpuinfo)
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_each_device_gets_its_type_and_a_cpu_never_float16(monkeypatch):
    assert precision.compute_dtype("fp32", on_gpu=True) is None
    assert precision.compute_dtype("mixed", on_gpu=True) == "float16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.compute_dtype("mixed", on_gpu=False) == "bfloat16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(FailedPrecondition, match="no bfloat16 instructions"):
        precision.compute_dtype("mixed", on_gpu=False)
    with pytest.raises(InvalidArgument, match="precision must be"):
        resolve_spec(tpb.JobSpec(framework="torch", model="mlp", precision="fp16"))
    assert resolve_spec(tpb.JobSpec(framework="tf", model="mlp")).precision == "fp32"


@pytest.mark.integration
def test_a_mixed_job_runs_in_bfloat16_or_is_refused_on_this_cpu(client):
    """Through the services: on a CPU with bfloat16 instructions the job trains in bfloat16 and
    says so; on one without, the job is refused at creation saying why (FAILED_PRECONDITION),
    rather than accepted to time an emulation."""
    spec = tpb.JobSpec(framework="both", model="mlp", precision="mixed", skip_export=True, **TINY)
    if not precision.cpu_has_bf16():
        with pytest.raises(grpc.RpcError) as refused:
            client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no bfloat16 instructions" in refused.value.details()
        assert "fp32" in refused.value.details()
        return
    jobs = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    for job in jobs:
        done, _ = wait_for(client, job.id)
        assert done.state == tpb.SUCCEEDED, done.error
        assert done.precision == "mixed bfloat16"
        assert "bfloat16" in done.fairness["precision"]


def _sessions(monkeypatch, model: str, precision_name: str):
    from twinbench.frameworks.tf.framework import TFSession
    from twinbench.frameworks.torch.framework import TorchSession

    # Runs the bfloat16 path here even where the CPU would emulate it: this checks what the
    # step computes, not how fast.
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    spec = resolve_spec(
        tpb.JobSpec(framework="torch", model=model, device="cpu", precision=precision_name)
    )
    declared = job_model(spec)
    return TorchSession(spec, declared), TFSession(spec, declared), declared


def test_bfloat16_steps_of_both_frameworks_stay_near_float32(monkeypatch):
    rng = np.random.default_rng(0)
    torch_mixed, tf_mixed, declared = _sessions(monkeypatch, "lenet5", "mixed")
    torch_fp32, tf_fp32, _ = _sessions(monkeypatch, "lenet5", "fp32")
    assert torch_mixed.precision == tf_mixed.precision == "mixed bfloat16"
    assert torch_fp32.precision == tf_fp32.precision == "fp32"
    x = rng.random((16, *declared.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    losses = {}
    for name, session in [("torch mixed", torch_mixed), ("tf mixed", tf_mixed),
                          ("torch fp32", torch_fp32), ("tf fp32", tf_fp32)]:  # fmt: skip
        losses[name] = [float(session.train_batch(session.prepare(x), y)[0]) for _ in range(3)]
    # One shared init, one batch: the first loss differs only by rounding. bfloat16 keeps 8 bits
    # of mantissa (a relative step of 2^-8, about 0.4%), so a few tenths of a percent apart.
    first = losses["torch fp32"][0]
    assert losses["tf fp32"][0] == pytest.approx(first, rel=1e-5)
    assert losses["torch mixed"][0] == pytest.approx(first, rel=2e-2)
    assert losses["tf mixed"][0] == pytest.approx(first, rel=2e-2)
    for name, values in losses.items():
        assert values[-1] < values[0], (name, values)  # three steps on one batch: it learns
    # Evaluation runs in float32 in both (Keras on a float32 twin holding the trained weights).
    for session in (torch_mixed, tf_mixed):
        logits = session.predict(session.prepare(x))
        assert logits.dtype == np.float32 and np.isfinite(logits).all()
    assert tf_mixed.fp32_model is not tf_mixed.model
    np.testing.assert_array_equal(
        tf_mixed.fp32_model.get_weights()[0], tf_mixed.model.get_weights()[0]
    )
