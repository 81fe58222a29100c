"""compare with three arms (torch,tf,jax): its design, one line per pair and question, and one Holm
family over all of them; the settings and the gateway's view of a third framework."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.cli.experiments import compare_frameworks
from twinbench.config import FRAMEWORKS, load_settings
from twinbench.experiments import compare_lines
from twinbench.experiments.compare_lines import serving_lines, training_lines
from twinbench.experiments.compare_plan import NATIVE_FORMATS, arm_pairs, plan_arms, run_order
from twinbench.experiments.verdicts import decide, family_note
from twinbench.serving.tensors import infer_request


def test_three_arms_share_each_repeats_seed_and_run_in_alternating_order():
    arms = plan_arms(("torch", "tf", "jax"), 3, 10)
    assert [a.label for a in arms] == ["torch", "tf", "jax"]
    assert all(a.seeds == [10, 11, 12] for a in arms)  # one shared init per repeat
    order = [arms[k].label for _, k in run_order(3, len(arms))]
    assert order == ["torch", "tf", "jax", "jax", "tf", "torch", "torch", "tf", "jax"]
    assert [(a.label, b.label) for a, b in arm_pairs(arms)] == [
        ("torch", "tf"),
        ("torch", "jax"),
        ("tf", "jax"),
    ]
    # A framework named twice: its arms get seeds of their own and letters by position.
    repeated = plan_arms(("torch", "tf", "torch"), 2, 0)
    assert [(a.label, a.seeds) for a in repeated] == [
        ("torch A", [0, 2]),
        ("tf", [0, 2]),
        ("torch C", [1, 3]),
    ]
    # Two arms keep their former design exactly.
    assert [(a.label, a.seeds) for a in plan_arms(("torch", "torch"), 2, 0)] == [
        ("torch A", [0, 2]),
        ("torch B", [1, 3]),
    ]
    assert run_order(2) == [(0, 0), (0, 1), (1, 1), (1, 0)]


def test_native_formats_come_from_the_frameworks_formats():
    assert set(NATIVE_FORMATS) >= {"torchscript", "savedmodel"}
    assert "onnx" not in NATIVE_FORMATS


@pytest.mark.parametrize("value", ["torch", "torch,tf,jax,torch", "torch,mxnet", ""])
def test_compare_refuses_other_than_two_or_three_known_frameworks(value):
    with pytest.raises(SystemExit, match="two or three of"):
        compare_frameworks(value)


def test_compare_takes_any_pair_and_all_three():
    for value in ("torch,jax", "jax,jax", "torch,tf,jax", "jax,tf"):
        assert compare_frameworks(value) == tuple(value.split(","))


def _job(framework: str, seed: int, speed: float, accuracy_rows: np.ndarray) -> tpb.Job:
    job = tpb.Job(id=f"{framework}-{seed:012x}", state=tpb.SUCCEEDED)
    job.spec.framework, job.spec.seed, job.spec.model = framework, seed, "mlp"
    job.steady_seconds, job.steady_samples_per_second = 10.0, speed
    job.test_predictions.extend(accuracy_rows.tolist())
    job.test_accuracy = float(np.mean(accuracy_rows == 0))
    return job


def _served(arm, pair, fmt: str, p50s: list[float]) -> dict:
    rounds = [{"version": str(i + 1), "latency_ms": {"p50": p}} for i, p in enumerate(p50s)]
    return {"arm": arm.label, "pair": pair, "format": fmt, "requests": 100, "rounds": rounds,
            "model_name": f"mlp-{arm.framework}-{fmt}", "version": str(len(p50s))}  # fmt: skip


def test_three_arms_give_twelve_lines_for_four_questions_in_one_holm_family(monkeypatch):
    """Speed, accuracy and serving in two formats, for each of three pairs: twelve lines,
    corrected together. jax is made clearly the fastest to train, so its two speed lines name it
    even after Holm over twelve; every line says which pair it compares."""
    labels = np.zeros(50, int)
    monkeypatch.setattr(compare_lines, "_test_labels", lambda job, settings: labels)
    arms = plan_arms(("torch", "tf", "jax"), 8, 0)
    rng = np.random.default_rng(1)
    pace = {"torch": 1000.0, "tf": 1000.0, "jax": 3000.0}
    for arm in arms:
        for seed in arm.seeds:
            wrong = (rng.random(50) < 0.1).astype(int)  # about 90% right in every arm
            speed = pace[arm.framework] * rng.lognormal(0, 0.02)
            arm.jobs.append(_job(arm.framework, seed, speed, wrong))
    serving = []
    for first, second in arm_pairs(arms):
        pair = [first.label, second.label]
        for arm in (first, second):
            for fmt in (
                "onnx",
                {"torch": "torchscript", "tf": "savedmodel"}.get(arm.framework, "stablehlo"),
            ):
                serving.append(_served(arm, pair, fmt, list(rng.lognormal(0, 0.05, 8))))
    lines = training_lines(arms, None, 0.95) + serving_lines(arms, serving, 0.95)
    entries = decide(lines, "CPU only")
    assert len(entries) == 12
    pairs = {(e["first"].split("-")[1] if "-" in e["first"] else e["first"],
              e["second"].split("-")[1] if "-" in e["second"] else e["second"])
             for e in entries}  # fmt: skip
    assert pairs == {("torch", "tf"), ("torch", "jax"), ("tf", "jax")}
    questions = {e["question"].split(" (")[0] for e in entries}
    assert questions == {
        "faster to train",
        "more accurate",
        "faster to serve, onnx",
        "faster to serve, native format",
    }
    assert "Holm-corrected over 12 lines" in family_note(entries)
    speed = [e for e in entries if e["question"].startswith("faster to train")]
    assert sorted((e["first"], e["second"], e["winner"]) for e in speed) == [
        ("tf", "jax", "jax"),
        ("torch", "jax", "jax"),
        ("torch", "tf", None),
    ]


def test_settings_know_three_trainers_each_on_its_own_ports():
    settings = load_settings({"TWINBENCH_JAX_TRAINER": "jaxhost:7000"})
    assert FRAMEWORKS == ("torch", "tf", "jax")
    assert settings.trainer_address("jax") == "jaxhost:7000"
    assert settings.trainer_link_address("jax") == "jaxhost:50064"  # the link follows its host
    assert settings.trainer_address("torch") == "127.0.0.1:50052"
    assert settings.frameworks == ("torch", "tf")  # the trainers a deployment runs by default
    assert load_settings({"TWINBENCH_FRAMEWORKS": "torch,jax"}).frameworks == ("torch", "jax")
    with pytest.raises(SystemExit, match="TWINBENCH_FRAMEWORKS"):
        load_settings({"TWINBENCH_FRAMEWORKS": "torch,mxnet"})


def test_the_gateway_says_a_framework_without_a_trainer_is_unavailable(client):
    """The test stack runs torch and tf: jax requests are refused with a message that says why,
    and "both" still means torch and tf."""
    with pytest.raises(grpc.RpcError) as refused:
        spec = tpb.JobSpec(framework="jax", model="lenet5", epochs=1, train_samples=64)
        client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no jax trainer runs behind this gateway" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        client.inference.ModelMetadata(ipb.ModelMetadataRequest(name="lenet5-jax-onnx"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "TWINBENCH_FRAMEWORKS=torch,tf" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:  # "all" starts none when one is missing
        spec = tpb.JobSpec(framework="all", model="lenet5", epochs=1, train_samples=64)
        client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as refused:  # the hot path, through the front when built
        image = np.zeros((1, 1, 28, 28), np.float32)
        client.inference.ModelInfer(infer_request("lenet5-jax-onnx", image))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no jax trainer" in refused.value.details()
    assert client.inference.ServerReady(ipb.ServerReadyRequest()).ready


def test_bench_training_prints_every_framework_and_every_pair():
    """Three frameworks: a column per framework, a ratio and a verdict per pair, and the
    published figures for the two frameworks the paper measured."""
    from twinbench.experiments.bench_training import table_rows

    def run(speed: float) -> dict:
        return {"state": "succeeded", "samples_per_second": speed, "warmup_seconds": 1.0,
                "peak_rss_bytes": 2**30, "data_peak_rss_bytes": 2**29, "peak_gpu_bytes": 0}  # fmt: skip

    frameworks = ("torch", "tf", "jax")
    speeds = {"torch": 100.0, "tf": 200.0, "jax": 400.0}
    row = {"model": "alexnet", "mode": "default", "precision": "fp32", "unit": "samples",
           "runs": {fw: [run(speeds[fw])] for fw in frameworks}, "published": (50.0, 100.0)}  # fmt: skip
    verdicts = [
        {"model": "alexnet", "mode": "default", "precision": "fp32", "first": a, "second": b,
         "interval": [0.4, 0.6], "ratio": speeds[a] / speeds[b], "winner": b, "outcome": "winner"}
        for a, b in (("torch", "tf"), ("torch", "jax"), ("tf", "jax"))
    ]  # fmt: skip
    results = {"options": {"frameworks": frameworks, "level": 0.95}, "rows": [row],
               "verdicts": verdicts}  # fmt: skip
    headers, (cells,) = table_rows(results)
    by = dict(zip(headers, cells, strict=True))
    assert [by[f"{fw} per s"] for fw in frameworks] == ["100.0", "200.0", "400.0"]
    assert by["torch/jax [95% interval]"].startswith("0.250") and by["torch/jax verdict"] == "jax"
    assert by["tf/jax [95% interval]"].startswith("0.500") and by["torch/tf verdict"] == "tf"
    assert by["published torch / tf per s (GP100 2019)"] == "100 / 50"
    two = {**results, "options": {"frameworks": ("torch", "tf"), "level": 0.95},
           "verdicts": verdicts[:1]}  # fmt: skip
    headers, _ = table_rows(two)
    assert "verdict" in headers and "torch/tf [95% interval]" in headers  # as before for two


def test_lockstep_refuses_three_frameworks_and_compare_three_with_lockstep_pairs():
    from twinbench.cli.main import main

    with pytest.raises(SystemExit, match="--lockstep trains two arms side by side"):
        main(["bench", "training", "--lockstep", "--frameworks", "torch,tf,jax"])
    with pytest.raises(SystemExit, match="--lockstep-pairs runs two arms"):
        main(["compare", "--frameworks", "torch,tf,jax", "--lockstep-pairs", "2"])
    with pytest.raises(SystemExit, match="two or three different ones"):
        main(["bench", "training", "--frameworks", "torch,torch"])


def test_a_sweep_of_another_pair_has_studies_of_its_own():
    from twinbench.experiments.sweep_studies import PAIRED, study_names

    assert study_names("mlp") == {"torch": "mlp/torch", "tf": "mlp/tf", PAIRED: "mlp/paired"}
    names = study_names("mlp", ("torch", "jax"))
    assert names == {"torch": "mlp/torch", "jax": "mlp/jax", PAIRED: "mlp/paired-torch-jax"}
    assert list(names)[:2] == ["torch", "jax"]  # the pair's order: first over second


def test_up_takes_known_frameworks_only_and_knows_whether_jax_is_installed():
    from twinbench.cli.main import main
    from twinbench.client.stack import installed_frameworks

    with pytest.raises(SystemExit, match="--frameworks=torch,mxnet: name each of torch, tf, jax"):
        main(["up", "--frameworks", "torch,mxnet"])
    installed = installed_frameworks()
    assert installed[:2] == ("torch", "tf")
    import importlib.util

    assert ("jax" in installed) == (importlib.util.find_spec("jax") is not None)
