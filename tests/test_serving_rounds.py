"""compare's serving in alternating blocks: the two exports of a pair take turns in seeded,
reversed couples of block pairs, a disturbed block pair is discarded whole and redone up to a
cap, and on the real services every block is a load generator's run on one export whose figures
make the export's figure in its round. Nothing here asserts on how fast anything served."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time

import jsonschema
import numpy as np

from tests_support import until
from twinbench.experiments.compare_lines import serving_lines
from twinbench.experiments.compare_plan import Arm, CompareOptions
from twinbench.experiments.disturbance import TICK_S, Monitor, process_cpu_seconds
from twinbench.experiments.results import SCHEMA_FILE
from twinbench.experiments.serving_rounds import (
    alternating_load_test,
    block_log_ratios,
    block_pairs_for,
    export_figures,
    run_round,
)


def counting_block(served: list[int]):
    """A block that serves nothing real: it records which export ran and busies the CPU a
    moment (a block needs time for the disturbance counters to read)."""

    def run_block(k: int) -> dict:
        served.append(k)
        total = sum(i * i for i in range(20_000))
        p50 = 2.0 if k == 0 else 1.0
        return {"requests": 10 + total % 2, "failures": 0, "requests_per_second": 100.0,
                "latency_ms": {"p50": p50}, "percentiles_ms": {"50": p50}}  # fmt: skip

    return run_block


def test_block_pairs_alternate_in_reversed_couples_and_the_record_says_in_which_order():
    served: list[int] = []
    played = run_round(counting_block(served), 4, first=1, seed=3, monitor=Monitor(),
                       limit=math.inf)  # fmt: skip
    orders = [p["order"] for p in played["pairs"]]
    assert orders[0] == [1, 0] and orders[1] == [0, 1]  # the round's first arm starts
    assert orders[2] == orders[3][::-1]  # each couple: AB BA or BA AB
    assert served == [k for order in orders for k in order]  # the record is what ran
    assert played["discarded"] == 0 and not played["too_disturbed"]
    assert block_log_ratios(played) == [math.log(2.0)] * 4
    figures = export_figures(played, 0)
    assert figures["latency_ms"]["p50"] == 2.0 and figures["blocks"] == 4
    assert figures["block_log_se"] == 0.0


def test_a_disturbed_block_pair_is_discarded_whole_and_past_the_cap_the_round_says_so():
    """A limit of minus infinity makes every block disturbed: each pair is discarded and redone until
    the cap; the round is too disturbed, and its figures come from the pairs it has."""
    served: list[int] = []
    played = run_round(counting_block(served), 3, first=0, seed=1, monitor=Monitor(),
                       limit=-math.inf, max_discards=2)  # fmt: skip
    assert played["too_disturbed"] and played["discarded"] == 3
    assert all(p["discarded"] and p["index"] is None for p in played["pairs"])
    assert len(served) == 6
    assert export_figures(played, 1)["blocks"] == 3


BURN = "import sys, time\nend = time.process_time() + float(sys.argv[1])\nwhile time.process_time() < end: pass"


def reaped_children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def test_a_child_that_ends_between_two_snapshots_is_ours_and_counted_once():
    """A load round's load generator starts and is reaped between the round's snapshots, so it
    is in neither: its CPU time is ours through its parent's reaped children, not someone else's.
    A child alive at the first snapshot and reaped before the second counts only what it used
    in between."""
    monitor = Monitor(cpus=sorted(os.sched_getaffinity(0)))
    children, before = reaped_children_cpu_s(), monitor.snapshot()
    subprocess.run([sys.executable, "-c", BURN, "0.3"], check=True)
    record = monitor.between(before, monitor.snapshot())
    child_s = reaped_children_cpu_s() - children
    assert child_s >= 0.3
    assert record["ours_cpu_s"] >= child_s - 2 * TICK_S, (record, child_s)

    children = reaped_children_cpu_s()
    child = subprocess.Popen([sys.executable, "-c", BURN, "0.4"])
    until(lambda: (process_cpu_seconds(child.pid) or 0.0) >= 0.2, "the child's first 0.2 s", 60)
    own, before = time.process_time(), monitor.snapshot()
    child.wait()
    record = monitor.between(before, monitor.snapshot())
    own = time.process_time() - own
    child_s = reaped_children_cpu_s() - children  # its whole life
    assert record["ours_cpu_s"] <= child_s - 0.2 + own + 4 * TICK_S, (record, child_s, own)


def test_the_exports_of_a_pair_are_served_in_alternating_blocks(stack, settings, trained, tmp_path):
    """The real services: each format's two exports (one per framework) in two rounds of
    block pairs; every block a load generator's run on one export, its disturbance recorded;
    the records have the shape the serving verdicts and results.json read."""
    arms = [Arm(fw, fw, [0], [trained[fw][0]]) for fw in ("torch", "tf")]
    options = CompareOptions(frameworks=("torch", "tf"), repeats=1, users=2, duration="0.6s",
                             rounds=2, serving_batch_size=1, reports=tmp_path, sample=0,
                             bench_seconds=0, command="")  # fmt: skip
    # Other people's processes may share this machine: blocks are recorded, not redone here
    # (the discards are the test above's).
    served = alternating_load_test(stack.gateway_address, settings, arms, options, tmp_path,
                                   block_seconds=0.3, progress=lambda text: None,
                                   services_ours=False)  # fmt: skip
    assert sorted((s["arm"], s["format"]) for s in served) == [
        ("tf", "onnx"), ("tf", "savedmodel"), ("torch", "onnx"), ("torch", "torchscript")
    ]  # fmt: skip
    schema = json.loads(SCHEMA_FILE.read_text())
    model_schema = {"$ref": "#/$defs/served_model", "$defs": schema["$defs"]}
    pairs = block_pairs_for(0.6, 0.3)
    for record in served:
        jsonschema.validate(record, model_schema)
        assert len(record["rounds"]) == 2 and record["failures"] == 0
        for r, round_ in enumerate(record["rounds"]):
            valid = [p for p in round_["block_pairs"] if not p["discarded"]]
            assert len(valid) == pairs
            assert round_["block_pairs"][0]["order"][0] == r % 2  # the first arm alternates
            mine = [b for p in valid for b in p["blocks"]
                    if b["export"] == (0 if record["arm"] == "torch" else 1)]  # fmt: skip
            assert all(b["requests"] > 0 and b["disturbance"]["seconds"] > 0 for b in mine)
            p50 = math.exp(np.mean([math.log(b["latency_ms"]["p50"]) for b in mine]))
            assert math.isclose(round_["latency_ms"]["p50"], p50)
            assert round_["requests"] == sum(b["requests"] for b in mine)
    lines = serving_lines(arms, served, 0.95)
    assert [line.question for line in lines] == [
        "faster to serve, onnx (p50 latency)", "faster to serve, native format (p50 latency)"
    ]  # fmt: skip
    assert all(line.estimate.repeats == 1 for line in lines)  # exports, not blocks, are the unit
