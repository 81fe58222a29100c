"""The main job end to end: Locust against the live gateway, `twinbench compare`, the report in Chromium."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from twinbench.data.datasets import load_dataset
from twinbench.experiments.loadtest import run_locust
from twinbench.experiments.results import SCHEMA_FILE

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def test_locust_runs_headless_against_the_gateway(stack, trained, tmp_path):
    model = trained["tf"][0].exports[-1].model_name

    np.save(tmp_path / "in.npy", load_dataset("mnist-5k").test.x[:16])
    stats = run_locust(
        stack.gateway_address, model, 2, "3s", 1, tmp_path / "in.npy", tmp_path / "run"
    )
    assert stats["requests"] > 10 and stats["failures"] == 0
    assert (
        0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"] <= stats["latency_ms"]["max"]
    )
    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    # Every request counted, from the totals Locust's process writes at exit (its CSV, written
    # each second, may miss the last ones); every successful one was timed.
    assert stats["requests"] == len(np.load(tmp_path / "run_latencies.npy")) + stats["failures"]
    assert int(rows.get(model, rows["Aggregated"])["Request Count"]) <= stats["requests"]
    assert (tmp_path / "run_stats_history.csv").exists() and (
        tmp_path / "run_failures.csv"
    ).exists()


@pytest.fixture(scope="module")
def report(stack, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    args = ["compare", "--epochs", "2", "--train-samples", "256", "--repeats", "2",
            "--users", "2", "--duration", "2s", "--rounds", "2"]  # fmt: skip
    return run_compare(stack, reports, args)


def run_compare(stack, reports, args: list[str]) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "twinbench.cli", "--gateway", stack.gateway_address, *args,
         "--reports", str(reports)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (directory,) = reports.iterdir()
    assert done.stdout.strip().endswith(str(directory / "report.html"))
    return directory


def test_compare_writes_every_file_and_results_match_the_schema(report):
    names = {p.name for p in report.iterdir()}
    assert {"report.html", "report.md", "results.json", "curves.png", "serving.png"} <= names
    results = json.loads((report / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert set(results["training"]) == {"torch", "tf"}
    assert results["design"]["order"] == ["torch", "tf", "tf", "torch"]  # A B B A
    for arm in results["training"].values():
        seeds = [r["seed"] for r in arm["repeats"]]
        assert seeds == [0, 1]  # a new seed per repeat, shared by both frameworks
        assert all(r["threads"]["intra_op"] >= 1 and r["window_samples_per_second"]
                   for r in arm["repeats"])  # fmt: skip
        assert all(r["exports"] for r in arm["repeats"])  # each repeat's serves a round
    for v in results["verdict"]:
        low, high = v["interval"]
        assert v["outcome"] in ("winner", "equivalent", "inconclusive")
        assert (v["winner"] is None) == (v["outcome"] != "winner")
        assert high is None or low <= v["ratio"] <= high
    served = {s["model_name"]: s for s in results["serving"]["models"]}
    assert set(served) == {
        "lenet5-torch-torchscript",
        "lenet5-torch-onnx",
        "lenet5-tf-savedmodel",
        "lenet5-tf-onnx",
    }
    assert all(s["requests"] > 0 and s["failures"] == 0 for s in served.values())
    # Each export's own time on its trainer, from ModelStatistics.
    assert all(s["server_compute_ms"] > 0 for s in served.values()), served
    assert "server compute ms" in (report / "report.md").read_text()
    for name, s in served.items():
        assert len(s["rounds"]) == 2 and sum(r["requests"] for r in s["rounds"]) == s["requests"]
        # Round r served repeat r's export; the last repeat's is the one named for the model.
        assert s["rounds"][-1]["version"] == s["version"] != s["rounds"][0]["version"]
        for served_round in s["rounds"]:  # the pair's two exports took turns in blocks
            assert served_round["block_pairs"] and served_round["requests"] > 0
        assert (report / "serving-requests" / f"{name}-v{s['version']}.bin").exists()
    questions = " ".join(v["question"] for v in results["verdict"])
    assert (
        "faster to train" in questions
        and "more accurate" in questions
        and "faster to serve" in questions
    )
    assert "## Verdict (CPU only" in (report / "report.md").read_text()
    # The coder's view: LeNet-5 as a user writes it in each framework, counted and shown.
    assert results["code"]["task"] == "lenet5"
    assert "## Code: lenet5" in (report / "report.md").read_text()
    assert "The two scripts (lenet5)" in (report / "report.html").read_text()


def test_an_a_a_run_shows_the_noise_floor_and_names_no_winner(stack, tmp_path):
    """One framework against itself through the same code path, each arm with its own seeds and
    its own served version. Run at 99%: at the default 95%, a correct A/A would name a false
    winner in up to 1 run in 20, and this test would fail as often."""
    args = ["compare", "--frameworks", "torch,torch", "--repeats", "3", "--epochs", "1",
            "--train-samples", "256", "--users", "1", "--duration", "2s",
            "--confidence", "0.99", "--bench-seconds", "0"]  # fmt: skip
    report = run_compare(stack, tmp_path, args)
    results = json.loads((report / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    design = results["design"]
    assert design["a_a"] and list(results["training"]) == ["torch A", "torch B"]
    assert design["seeds"] == {"torch A": [0, 2, 4], "torch B": [1, 3, 5]}
    served = {s["arm"]: s for s in results["serving"]["models"] if s["format"] == "onnx"}
    assert served["torch A"]["version"] != served["torch B"]["version"]
    questions = {v["question"].split(" (")[0] for v in results["verdict"]}
    assert {"faster to train", "more accurate", "faster to serve, onnx"} <= questions
    # Three repeats, so three rounds, each serving another repeat's pair of exports.
    for s in served.values():
        assert [r["version"] for r in s["rounds"]] == s["versions"] and len(s["versions"]) == 3
    assert [v["question"] for v in results["verdict"] if v["outcome"] == "winner"] == []
    assert "A/A run" in (report / "report.md").read_text()


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (path and driver):
        if os.environ.get("TWINBENCH_BROWSER_TESTS") == "required":
            pytest.fail(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            )
        pytest.skip("no chromium/chromedriver here; CI installs them")
    return path, driver


def test_html_report_renders_in_headless_chromium(report):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,3200"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((report / "report.html").as_uri())
        assert driver.title.startswith("twinbench: lenet5")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        assert len(images) == 4
        assert all(done and width > 100 for _, done, width in images), images
        assert driver.execute_script("return document.querySelectorAll('table').length") >= 4
        # Self-contained: nothing but the page itself and inline data was requested.
        urls = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert all(u.startswith("data:") for u in urls), urls
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        driver.quit()
