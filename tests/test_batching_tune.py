"""Batching tuned per export: the budgeted search and the grid on made-up servers, the best
setting through config.pbtxt and back (and kept by a new version), the gateway batching each
model its own way, and a real small tuning run on trained LeNet-5 exports."""

import pytest
from google.protobuf import text_format

from twinbench.api import inference_pb2 as ipb
from twinbench.config import load_settings
from twinbench.data.datasets import load_dataset
from twinbench.experiments.batching_tune import (
    Setting,
    batch_models_setting,
    budgeted_search,
    grid,
    run_batching_tune,
    tune,
    write_best,
)
from twinbench.experiments.server_scenario import Step
from twinbench.serving.repository import ModelRepository, read_dynamic_batching
from twinbench.serving.tensors import infer_request

FIELDS = dict(model="lenet5", framework="torch", job_id="torch-1", input_shape=(1, 28, 28),
              num_classes=10, class_names=tuple("0123456789"), max_batch_size=8,
              max_abs_diff=0.0)  # fmt: skip


def server_of_capacity(capacity: float):
    rates = []

    def measure(rate: float) -> Step:
        rates.append(rate)
        passed = rate <= capacity
        return Step(rate, 1000, 2.0 if passed else 50.0, 0, 0, 0, 0.2, 0.5, passed)

    return measure, rates


def test_every_search_takes_the_same_steps_and_closes_in_on_the_capacity():
    measure, rates = server_of_capacity(1000)
    found, steps = budgeted_search(measure, steps=6, start_rate=400)
    assert rates == pytest.approx([400, 800, 1600, 800 * 2**0.5, 800 * 2**0.25, 800 * 2**0.375])
    assert len(steps) == 6 and 800 < found <= 1000
    measure, rates = server_of_capacity(60)  # the first step fails: halving
    found, steps = budgeted_search(measure, steps=6, start_rate=400)
    assert rates[:4] == [400, 200, 100, 50] and len(steps) == 6 and 50 <= found <= 60
    measure, _ = server_of_capacity(0)
    assert budgeted_search(measure, steps=3)[0] == 0.0


def test_the_grid_picks_each_exports_known_best_with_the_same_budget():
    # Made-up exports: onnx best at 8 rows and 0.5 ms; torchscript at 16 rows, where 0 and
    # 2 ms tie and the shorter delay wins.
    best_rate = {
        "onnx": lambda s: 3000 if s == Setting(8, 500) else 1000 + 10 * s.max_rows,
        "torchscript": lambda s: 2000 if (s.max_rows, s.delay_us) in ((16, 0), (16, 2000)) else 900,
    }
    applied, scored = [], []

    def score(setting, model):
        scored.append((setting, model))
        measure, _ = server_of_capacity(best_rate[model](setting))
        return budgeted_search(measure, steps=12, start_rate=100)

    settings = grid((1, 4, 8, 16), (0, 500, 2000))
    tuned = tune(score, ["onnx", "torchscript"], settings, apply=applied.append)
    assert applied == settings  # each setting applied once, in the grid's order
    assert scored == [(s, m) for s in settings for m in ("onnx", "torchscript")]
    assert tuned["onnx"]["best"] == {"max_rows": 8, "delay_us": 500}
    assert tuned["torchscript"]["best"] == {"max_rows": 16, "delay_us": 0}
    for result in tuned.values():  # the same budget for every export and setting
        assert len(result["steps"]) == 12 * len(settings) and len(result["scores"]) == 12
    assert 2700 < tuned["onnx"]["max_rate"] <= 3000


def test_the_best_setting_goes_through_config_pbtxt_and_a_new_version_keeps_it(tmp_path):
    repo = ModelRepository(tmp_path)
    name = "lenet5-torch-onnx"

    def publish():
        with repo.stage(name, "onnx") as staging:
            staging.model_path.write_bytes(b"model bytes")
            return staging.publish(**FIELDS)

    publish()
    assert read_dynamic_batching(tmp_path / name) is None
    tuned = {name: {"best": {"max_rows": 8, "delay_us": 500}}}
    write_best([tmp_path], tuned)
    # Read as the trainers' ModelConfig reads it (twinbench.serving.dataplane): the rest kept.
    config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), ipb.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == (name, "onnxruntime_onnx", 8)
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert publish().version == 2  # a new version: its config, the model's batching kept
    assert read_dynamic_batching(tmp_path / name) == (8, 500)
    assert "max_batch_size: 8" in (tmp_path / name / "config.pbtxt").read_text()
    # A model not exported here yet: a config of its name and batching, listed once exported.
    write_best([tmp_path], {"lenet5-tf-onnx": {"best": {"max_rows": 4, "delay_us": 0}}})
    assert repo.names() == [name] and read_dynamic_batching(tmp_path / "lenet5-tf-onnx") == (4, 0)
    # compare --tuned-batching: the gateway's per-model setting, and the others' defaults.
    text, found = batch_models_setting(tmp_path, [name, "lenet5-tf-onnx", "lenet5-tf-savedmodel"])
    assert text == "lenet5-torch-onnx=8:500,lenet5-tf-onnx=4:0" and len(found) == 2
    settings = load_settings({"TWINBENCH_BATCH_MODELS": text, "TWINBENCH_BATCH_MAX_ROWS": "64"})
    assert settings.batch_limits(name) == (8, 0.0005)
    assert settings.batch_limits("lenet5-tf-savedmodel") == (64, 0.0)


def test_a_real_tuning_run_writes_each_exports_best_and_the_gateway_serves_with_it(
    stack, client, trained
):
    """Two settings, two steps of 1 s each per export: the search and the write for real; the
    gateway (its Go front, when built) then restarted with the models' own batching."""
    exports = [e for job, _ in (trained["torch"],) for e in job.exports]
    image = load_dataset("mnist-5k").test.x[:1]
    requests = {e.model_name: infer_request(e.model_name, image).SerializeToString()
                for e in exports}  # fmt: skip
    before = dict(stack.extra_env)
    settings = [Setting(1, 0), Setting(8, 500)]
    tuned = run_batching_tune(stack, requests, 50.0, settings, steps=2, step_s=1.0)
    assert stack.extra_env == before  # the gateway's environment left as it was
    for result in tuned.values():
        assert len(result["steps"]) == 2 * len(settings)
        assert all(s["requests"] > 0 for s in result["steps"]), result["steps"]
        assert result["best"] in [
            {"max_rows": s.max_rows, "delay_us": s.delay_us} for s in settings
        ]
    repository = stack.settings.model_repository
    write_best([repository], tuned)
    text, found = batch_models_setting(repository, list(requests))
    assert set(found) == set(requests)
    try:
        stack.extra_env["TWINBENCH_BATCH_MODELS"] = text
        stack.restart("gateway")
        for name in requests:
            reply = client.inference.ModelInfer(infer_request(name, image), timeout=30)
            assert reply.model_name == name
    finally:
        stack.extra_env.pop("TWINBENCH_BATCH_MODELS", None)
        stack.restart("gateway")
