"""`twinbench compare --until-decided --budget` end to end on the real services: it adds pairs of
repeats, stops, and says how many and why in results.json, the console and the report."""

import json

import jsonschema
from test_compare import run_compare

from twinbench.experiments.results import SCHEMA_FILE
from twinbench.experiments.sequential import MIN_LOOK_PAIRS


def test_compare_until_decided_stops_and_says_why(stack, tmp_path):
    """A tiny A/A run with a budget shorter than the first pairs: the minimum pairs still run
    (fewer decide nothing), then the budget stops it; no line names a winner."""
    args = ["compare", "--model", "mlp", "--frameworks", "torch,torch", "--epochs", "1",
            "--train-samples", "128", "--users", "0", "--bench-seconds", "0",
            "--until-decided", "--budget", "1s", "--max-pairs", "4"]  # fmt: skip
    report = run_compare(stack, tmp_path, args)
    results = json.loads((report / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    stopping = results["stopping"]
    assert stopping["pairs"] == MIN_LOOK_PAIRS == results["design"]["repeats"]
    assert stopping["stopped"] == "budget spent" and stopping["budget_s"] == 1
    seeds = list(range(2 * MIN_LOOK_PAIRS))
    assert results["design"]["seeds"] == {"torch A": seeds[::2], "torch B": seeds[1::2]}
    assert len(results["design"]["order"]) == 2 * MIN_LOOK_PAIRS
    speed = [v for v in results["verdict"] if v["question"].startswith("faster to train")]
    assert speed and "anytime-valid" in speed[0]["method"] and speed[0]["repeats"] == MIN_LOOK_PAIRS
    assert all(v["outcome"] != "winner" for v in results["verdict"])
    text = (report / "report.md").read_text()
    assert f"stopped after {MIN_LOOK_PAIRS} pairs, budget spent" in text
