"""compare with JAX end to end: a torch/jax pair trained, served and load-tested, and three arms
(torch,tf,jax) with every pair's lines, on a stack of all three trainers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from twinbench.client.stack import LocalStack, installed_frameworks
from twinbench.config import load_settings
from twinbench.experiments.results import SCHEMA_FILE

pytestmark = pytest.mark.skipif(
    "jax" not in installed_frameworks(),
    reason="JAX (requirements/jax_trainer.txt) is not installed",
)
ENV = {"TWINBENCH_TRAIN_THREADS": "2", "TWINBENCH_TRAIN_INTEROP_THREADS": "2"}
SMALL = ["--model", "lenet5", "--epochs", "1", "--train-samples", "256", "--repeats", "2",
         "--bench-seconds", "0", "--lockstep-pairs", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    home = tmp_path_factory.mktemp("three-trainers")
    settings = load_settings({"TWINBENCH_HOME": str(home), **ENV})
    with LocalStack(settings, {"gateway": 0}, ENV, frameworks=("torch", "tf", "jax")) as stack:
        yield stack


def compare(stack: LocalStack, reports, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "twinbench.cli", "--gateway", stack.gateway_address, "compare",
         *SMALL, *args, "--reports", str(reports)],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "TWINBENCH_HOME": str(stack.settings.home)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (directory,) = reports.iterdir()
    results = json.loads((directory / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    results["stdout"] = done.stdout
    results["report_md"] = (directory / "report.md").read_text()
    return results


def test_torch_against_jax_trains_serves_and_decides_per_format(three, tmp_path):
    results = compare(three, tmp_path, "--frameworks", "torch,jax", "--users", "1",
                      "--duration", "1s", "--rounds", "2")  # fmt: skip
    assert list(results["training"]) == ["torch", "jax"]
    assert results["design"]["pairs"] == [["torch", "jax"]]
    assert results["design"]["seeds"] == {"torch": [0, 1], "jax": [0, 1]}  # one shared init
    served = {s["model_name"]: s for s in results["serving"]["models"]}
    assert set(served) == {
        "lenet5-torch-torchscript",
        "lenet5-torch-onnx",
        "lenet5-jax-stablehlo",
        "lenet5-jax-onnx",
    }
    assert all(s["requests"] > 0 and s["failures"] == 0 for s in served.values())
    lines = {v["question"].split(" (")[0]: v for v in results["verdict"]}
    native = lines["faster to serve, native format"]
    assert native["first"].startswith("lenet5-torch-torchscript")
    assert native["second"].startswith("lenet5-jax-stablehlo")
    assert {"faster to train", "more accurate", "faster to serve, onnx"} <= set(lines)
    assert "JAX" in results["report_md"]


def test_three_arms_compare_every_pair_in_one_family(three, tmp_path):
    results = compare(three, tmp_path, "--frameworks", "torch,tf,jax", "--users", "0")
    design = results["design"]
    assert list(results["training"]) == ["torch", "tf", "jax"]
    assert design["order"] == ["torch", "tf", "jax", "jax", "tf", "torch"]  # A B C, C B A
    assert design["pairs"] == [["torch", "tf"], ["torch", "jax"], ["tf", "jax"]]
    pairs = {(v["first"], v["second"]) for v in results["verdict"]}
    assert pairs == {("torch", "tf"), ("torch", "jax"), ("tf", "jax")}
    speed = [v for v in results["verdict"] if v["question"].startswith("faster to train")]
    assert len(speed) == 3
    # Speed and accuracy for each of three pairs: six lines, corrected together.
    assert len(results["verdict"]) == 6
    assert "Holm-corrected over" in results["stdout"] and "3 arms" in results["report_md"]
    assert "3 arms, every pair compared" in results["report_md"]
