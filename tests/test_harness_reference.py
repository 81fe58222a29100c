"""bench training --reference bare: a job worker and a bare loop of the same model, for real, in
lockstep; both with the same CPU set and threads, every block parked, and the cost line made
of the process pairs. Nothing here asserts on how fast anything ran."""

from __future__ import annotations

import math

import pytest

from twinbench.experiments.bench_training import BenchOptions
from twinbench.experiments.harness_reference import (
    BARE,
    HARNESS,
    REFERENCE_PAIRS,
    charged,
    describe_cost,
    report_text,
    run_reference,
)
from twinbench.experiments.lockstep_pairs import LockstepOptions


@pytest.mark.integration
def test_the_harness_and_a_bare_loop_train_in_lockstep_and_give_a_cost(tmp_path, monkeypatch):
    from twinbench.config import load_settings

    monkeypatch.setenv("TWINBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("TWINBENCH_TRAIN_THREADS", "2")
    monkeypatch.setenv("TWINBENCH_TRAIN_INTEROP_THREADS", "2")
    options = BenchOptions(models=("lenet5",), frameworks=("torch", "torch"), repeats=2,
                           batch_size=32, warmup_steps=2)  # fmt: skip
    lockstep = LockstepOptions(block_pairs=2, block_steps=6, calibration_steps=3,
                               disturbance_limit=math.inf)  # fmt: skip
    results = run_reference(load_settings(), options, lockstep, progress=lambda text: None)
    (row,) = results["rows"]  # one framework, given twice: timed once
    assert row["framework"] == "torch"
    for pp in row["lockstep"]:
        assert pp["failed"] is None
        harness, bare = pp["jobs"]
        assert (harness["arm"], bare["arm"]) == (HARNESS, BARE)
        assert harness["cpu_set"] == bare["cpu_set"] and harness["cpu_set"]
        assert harness["threads"] == bare["threads"] == [2, 2]
        assert [harness["outcome"], bare["outcome"]] == ["cancelled", "cancelled"]
        for pair in pp["pairs"]:
            for k, block in zip(pair["order"], pair["blocks"], strict=True):
                assert block["parked"]["cpu_s"] == 0.0
                assert block["samples"] == 32 * block["steps"]
                assert ("harness_cpu_s" in block) == (k == 1)
    (verdict,) = results["verdicts"]
    assert verdict["repeats"] == 2 and (verdict["first"], verdict["second"]) == (HARNESS, BARE)
    cost = row["cost"]
    assert math.isclose(cost["cost"], 1 - verdict["ratio"])
    assert cost["low"] <= cost["cost"] <= cost["high"]
    assert "harness cost" in describe_cost(row) and "| lenet5 |" in report_text(results)


def test_the_harness_cpu_during_a_bare_block_is_charged_to_the_harness():
    block = {"seconds": 1.0, "parked": {"cpu_s": 0.25}}
    pp = {"pairs": [{"order": [0, 1], "blocks": [dict(block), dict(block)]}]}
    harness_block, bare_block = charged(pp)["pairs"][0]["blocks"]
    assert harness_block["seconds"] == 1.0 and bare_block["seconds"] == 1.25
    assert pp["pairs"][0]["blocks"][1]["seconds"] == 1.0  # the record itself is kept


@pytest.mark.parametrize(
    ("extra", "repeats"),
    [
        ([], 3),
        (["--reference", "bare"], REFERENCE_PAIRS),
        (["--reference", "bare", "--repeats", "4"], 4),
    ],
)
def test_the_reference_takes_more_process_pairs_by_default(extra, repeats):
    """Three pairs put t = 4.30 on a ratio that moves about 0.04 from pair to pair: the
    reference's interval then spans about 20 points, so `--reference bare` takes 6 unless told."""
    from twinbench.cli.experiments import bench_options
    from twinbench.cli.parser import parser

    args = parser().parse_args(["bench", "training", "--model", "lenet5", *extra])
    assert bench_options(args).repeats == repeats
