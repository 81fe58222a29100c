"""`twinbench bench training`: jobs on the real services, repeated, paired, reported."""

import json

import pytest

from twinbench.experiments.bench_training import (
    BenchOptions,
    run_training_bench,
    write_bench_report,
)

pytestmark = pytest.mark.integration


def test_bench_training_pairs_repeats_and_writes_its_report(client, tmp_path):
    # A small model and few steps: this proves the plumbing, not a figure.
    options = BenchOptions(
        models=("mlp",), repeats=2, batch_size=32, warmup_steps=2, steps=6, channels_last=True
    )
    results = run_training_bench(client, options, progress=lambda line: None)
    (row,) = results["rows"]
    for framework in ("torch", "tf"):
        runs = row["runs"][framework]
        assert [r["state"] for r in runs] == ["succeeded"] * 2, runs
        assert all(r["samples_per_second"] > 0 and r["peak_rss_bytes"] > 0 for r in runs)
        assert all(len(r["windows"]) > 0 for r in runs)
    assert row["runs"]["torch"][0]["layout"].startswith("channels-last")
    (verdict,) = results["verdicts"]
    assert verdict["first"] == "torch" and verdict["second"] == "tf" and verdict["repeats"] == 2
    low, high = verdict["interval"]
    assert low < verdict["ratio"] < high
    paths = write_bench_report(tmp_path, results)
    assert json.loads(paths[0].read_text())["rows"][0]["model"] == "mlp"
    assert "published" in paths[1].read_text().lower()


def test_compiled_mode_trains_in_both_frameworks(client):
    options = BenchOptions(
        models=("mlp",), modes=("compiled",), repeats=1, batch_size=32, warmup_steps=2, steps=4
    )
    (row,) = run_training_bench(client, options, progress=lambda line: None)["rows"]
    torch_run, tf_run = row["runs"]["torch"][0], row["runs"]["tf"][0]
    assert torch_run["state"] == tf_run["state"] == "succeeded", (torch_run, tf_run)
    assert "torch.compile" in torch_run["compilation"]
    assert "jit_compile=True" in tf_run["compilation"]
