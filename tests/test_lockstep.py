"""Lockstep pairs: a parked worker takes no CPU (measured from /proc), block pairs come in
seeded, balanced orders, the estimate takes process pairs as its unit, and a disturbed block pair
is discarded whole and redone. Nothing here asserts on how fast anything ran."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests_support import spinning
from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.disturbance import Monitor, Snapshot
from twinbench.experiments.lockstep import lockstep_estimate, pair_summary, resume_cost
from twinbench.experiments.lockstep_pairs import (
    ArmProcess,
    LockstepOptions,
    block_orders,
    fit_together,
    run_process_pair,
)

FAKE = [sys.executable, str(Path(__file__).parent / "lockstep_worker.py")]


def fake_arm(label: str, *extra: str):
    def start() -> ArmProcess:
        job = tpb.Job(id=f"torch-{'0' * 11}{label[-1]}", spec=tpb.JobSpec(framework="torch"))
        return ArmProcess(label, [*FAKE, *extra], job)

    return start


def all_blocks(pp: dict) -> list[dict]:
    return [b for p in pp["pairs"] for b in p["blocks"]] + [
        b for b in pp["calibration"] if b is not None
    ]


# The block protocol.


@pytest.mark.parametrize("together", [False, True], ids=["one after the other", "together"])
def test_a_parked_worker_takes_no_cpu_and_makes_no_context_switches(together):
    """Both arms keep a helper thread busy outside the GIL: only stopping the whole process
    stops it. While one arm trains its block, the other's CPU time and context switches, read
    from /proc before and after, do not move, whether the two processes started one after the
    other or at once (each parks once loaded, before its first block)."""
    options = LockstepOptions(block_pairs=4, block_steps=15, calibration_steps=5,
                              disturbance_limit=math.inf)  # fmt: skip
    pp = run_process_pair(
        [fake_arm("a", "--spinning-thread"), fake_arm("b", "--spinning-thread")],
        first=0, seed=1, options=options, warmup_steps=2, together=together,
    )  # fmt: skip
    assert pp["failed"] is None
    assert pp["started_together"] is together
    assert len(pp["pairs"]) == 4 and pp["discarded"] == 0
    blocks = all_blocks(pp)
    for block in blocks:
        assert block["parked"]["cpu_s"] == 0.0, block
        assert block["parked"]["context_switches"] == 0, block
        assert block["parked"]["arm"] != block["arm"]
        assert block["disturbance"]["active_cpu_s"] > 0  # the active arm did work
    for pair in pp["pairs"]:
        assert [b["steps"] for b in pair["blocks"]] == [15, 15]
        assert all(b["first_step_samples"] == 16 for b in pair["blocks"])
    # Both workers were ended at the end of the pair, as asked.
    assert [j["outcome"] for j in pp["jobs"]] == ["cancelled", "cancelled"]


def test_a_worker_that_dies_fails_its_pair_and_leaves_nothing_running():
    def dying() -> ArmProcess:
        job = tpb.Job(id="tf-000000000001", spec=tpb.JobSpec(framework="tf"))
        return ArmProcess("dies", [sys.executable, "-c", "import sys; sys.exit(3)", "--"], job)

    pp = run_process_pair([fake_arm("a"), dying], first=0, seed=0,
                          options=LockstepOptions(block_pairs=2, block_steps=5), warmup_steps=1)  # fmt: skip
    assert pp["failed"] and "exit code 3" in pp["failed"]


def test_the_next_pair_starts_both_processes_at_once_only_when_the_last_pair_fits_twice_over(
    monkeypatch,
):
    from twinbench.experiments import lockstep_pairs

    monkeypatch.setattr(lockstep_pairs, "available_memory_bytes", lambda: 10 << 30)
    sized = {"jobs": [{"peak_rss_bytes": 2 << 30}, {"peak_rss_bytes": 1 << 30}]}
    assert fit_together(sized)  # 1.5 x 3 GiB < 10 GiB
    assert not fit_together({"jobs": [{"peak_rss_bytes": 4 << 30}, {"peak_rss_bytes": 3 << 30}]})
    assert not fit_together(None)  # the first pair: sizes unknown, one after the other
    assert not fit_together({"jobs": [{"peak_rss_bytes": 1 << 30}, None]})  # one never started
    # Before the first pair, each arm's peak in an earlier job of the same model stands in.
    assert fit_together(None, [2 << 30, 1 << 30])
    assert not fit_together(None, [4 << 30, 3 << 30])
    assert not fit_together(None, [2 << 30, 0])  # one arm's peak unknown
    assert fit_together(sized, [8 << 30, 8 << 30])  # a pair that ran says more than a job


def test_lockstep_arms_leave_one_cpu_unless_told_their_threads():
    from twinbench.experiments.compare_plan import lockstep_threads

    assert lockstep_threads(None, 0, 2) == (1, 1)
    assert lockstep_threads(None, 0, 8) == (7, 7)
    assert lockstep_threads(None, 0, 1) is None  # one CPU: the settings' one thread
    assert lockstep_threads(None, 4, 8) is None  # TWINBENCH_TRAIN_THREADS set: the settings'
    assert lockstep_threads((1, 2), 0, 8) == (1, 2)  # --arm-threads


# Order.


def test_block_pairs_come_in_reversed_couples_in_a_seeded_order():
    orders = block_orders(40, first=1, seed=7)
    assert orders == block_orders(40, first=1, seed=7)  # recorded by its seed
    assert orders[0] == (1, 0)  # the process pair's starting arm
    assert all(orders[i] == orders[i + 1][::-1] for i in range(0, 40, 2))
    assert sum(o[0] == 0 for o in orders) == 20  # each arm first in half the pairs
    starts = {orders[i] for i in range(2, 40, 2)}
    assert starts == {(0, 1), (1, 0)}  # the couples' orientation is drawn, not fixed
    assert block_orders(40, first=1, seed=8) != orders
    assert block_orders(3, first=0, seed=0)[:2] == [(0, 1), (1, 0)]


def test_the_recorded_order_is_the_order_the_arms_ran_in():
    options = LockstepOptions(block_pairs=6, block_steps=5, calibration_steps=3,
                              disturbance_limit=math.inf)  # fmt: skip
    for first in (0, 1):
        pp = run_process_pair([fake_arm("a"), fake_arm("b")], first=first, seed=3,
                              options=options, warmup_steps=1)  # fmt: skip
        assert pp["failed"] is None
        assert pp["start_order"] == [first, 1 - first]
        assert pp["pairs"][0]["order"][0] == first
        for pair in pp["pairs"]:
            assert [b["arm"] for b in pair["blocks"]] == ["ab"[k] for k in pair["order"]]
            assert tuple(pair["order"]) == block_orders(6, first, 3)[pair["index"]]


# The estimate, on synthetic blocks.


def synthetic_pair(ratio: float, process_effect: float, noise: float, m: int, rng) -> dict:
    """A process pair's blocks: arm 0 is `ratio` times as fast as arm 1, times a factor that
    lasts the pair's lifetime (`process_effect`, in log), with per-block noise and a drift that
    both arms share."""
    pairs = []
    for i, order in enumerate(block_orders(m, 0, int(rng.integers(1000)))):
        drift = 0.2 * math.sin(i / 3)
        blocks = []
        for k in order:
            rate = 1000.0 * math.exp(drift + rng.normal(0, noise))
            if k == 0:
                rate *= ratio * math.exp(process_effect)
            seconds = 0.5
            blocks.append({"steps": 10, "samples": rate * seconds, "seconds": seconds,
                           "first_step_seconds": seconds / 10, "first_step_samples": rate * seconds / 10})  # fmt: skip
        pairs.append({"order": list(order), "blocks": blocks, "discarded": False, "index": i})
    return {"pairs": pairs}


def test_the_estimate_recovers_a_known_ratio_through_drift():
    rng = np.random.default_rng(0)
    pps = [synthetic_pair(1.25, 0.0, 0.01, 20, rng) for _ in range(3)]
    summaries = [pair_summary(pp, drop_first=False) for pp in pps]
    assert all(s is not None for s in summaries)
    estimate = lockstep_estimate([s for s in summaries if s], 0.95)
    assert estimate.ratio == pytest.approx(1.25, rel=0.01)
    assert estimate.low < 1.25 < estimate.high
    assert estimate.high / estimate.low < 1.05  # the shared drift cancels within block pairs


def test_the_interval_takes_process_pairs_as_its_unit():
    """Block pairs within a process pair agree closely, but each process pair carries an effect
    of its own: the interval must be as wide as the pairs' spread, not the blocks'."""
    rng = np.random.default_rng(1)
    effects = [-0.06, 0.0, 0.06]
    pps = [synthetic_pair(1.25, e, 0.005, 30, rng) for e in effects]
    summaries = [s for pp in pps if (s := pair_summary(pp, drop_first=False))]
    estimate = lockstep_estimate(summaries, 0.95)
    assert estimate.repeats == 3
    within = max(s["log_se"] for s in summaries)
    half_width = math.log(estimate.high / estimate.ratio)
    assert half_width > 10 * within  # the blocks' own spread would have been far narrower
    assert half_width == pytest.approx(4.303 * np.std(effects, ddof=1) / math.sqrt(3), rel=0.1)
    # One process pair decides nothing, however many block pairs it has.
    one = lockstep_estimate(summaries[:1], 0.95)
    assert one.repeats == 1 and one.high == math.inf


def test_a_costly_first_step_after_a_resume_is_left_out_of_every_block():
    rng = np.random.default_rng(2)
    pp = synthetic_pair(1.0, 0.0, 0.0, 10, rng)
    for pair in pp["pairs"]:
        for k, block in zip(pair["order"], pair["blocks"], strict=True):
            if k == 0:  # arm 0's first step after a resume takes 3 steps' time
                block["first_step_seconds"] = 3 * block["seconds"] / 10
                block["seconds"] += 2 * block["seconds"] / 10
    costs = resume_cost([pp])
    assert costs[0] == pytest.approx(2 / 12, rel=1e-6) and costs[1] == pytest.approx(0.0, abs=1e-9)
    kept = pair_summary(pp, drop_first=False)
    dropped = pair_summary(pp, drop_first=True)
    assert kept is not None and dropped is not None
    assert kept["ratio"] == pytest.approx(10 / 12, rel=1e-6)
    assert dropped["ratio"] == pytest.approx(1.0, rel=1e-6)


# Disturbance: discarded whole and redone.


class OursOnly(Monitor):
    """The real measurement from /proc, judged by this run's own processes only: the injected
    disturbance is a child of this test, while what other programs do on a shared machine must
    not decide the test."""

    def between(self, before: Snapshot, after: Snapshot, active=()) -> dict:
        record = super().between(before, after, active)
        record["fraction"] = record["ours_cpu_s"] / (record["seconds"] * len(self.cpus))
        return record


class Disturber:
    """Busy-loop processes, two per CPU, started before chosen blocks (and given time to start
    spinning) and ended after them."""

    def __init__(self, blocks: set[tuple[int, int]]) -> None:
        self.blocks = blocks
        self.running: list[subprocess.Popen] = []

    def before(self, attempt: int, position: int) -> None:
        if (attempt, position) in self.blocks or (None, position) in self.blocks:
            cpus = len(Monitor().cpus)
            self.running = [subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"])
                            for _ in range(2 * cpus)]  # fmt: skip
            for p in self.running:
                spinning(p)

    def after(self, attempt: int, position: int) -> None:
        for p in self.running:
            p.kill()
            p.wait()
        self.running = []


def test_a_disturbed_block_pair_is_discarded_whole_and_redone():
    disturber = Disturber({(1, 1)})  # the second block of the second attempt
    options = LockstepOptions(block_pairs=4, block_steps=100, calibration_steps=3,
                              disturbance_limit=0.1)  # fmt: skip
    pp = run_process_pair(
        [fake_arm("a"), fake_arm("b")], first=0, seed=5, options=options, warmup_steps=1,
        monitor_for=OursOnly, before_block=disturber.before, after_block=disturber.after,
    )  # fmt: skip
    assert pp["failed"] is None and not pp["too_disturbed"]
    assert pp["discarded"] == 1
    assert [p["discarded"] for p in pp["pairs"]] == [False, True, False, False, False]
    bad = pp["pairs"][1]
    assert (
        bad["blocks"][1]["disturbance"]["ours_cpu_s"]
        > bad["blocks"][0]["disturbance"]["ours_cpu_s"]
    )
    # The redone pair takes the discarded one's place, in the same order.
    assert pp["pairs"][2]["index"] == 1 and pp["pairs"][2]["order"] == bad["order"]
    assert len([p for p in pp["pairs"] if not p["discarded"]]) == 4


def test_past_the_cap_a_process_pair_is_too_disturbed():
    disturber = Disturber({(None, 0)})  # the first block of every pair
    options = LockstepOptions(block_pairs=3, block_steps=100, calibration_steps=3,
                              disturbance_limit=0.1, max_discards=1)  # fmt: skip
    pp = run_process_pair(
        [fake_arm("a"), fake_arm("b")], first=0, seed=5, options=options, warmup_steps=1,
        monitor_for=OursOnly, before_block=disturber.before, after_block=disturber.after,
    )  # fmt: skip
    assert pp["too_disturbed"] and pp["discarded"] == 2
    assert all(p["discarded"] for p in pp["pairs"])


# Both frameworks, for real.


@pytest.mark.integration
def test_lockstep_speed_pairs_of_real_jobs_train_in_parked_blocks(tmp_path, monkeypatch):
    """compare --lockstep-pairs: both frameworks' real job workers, each process pair with the
    same CPU set and threads, every block parked, and one verdict line over the process pairs."""
    from twinbench.config import load_settings
    from twinbench.experiments.lockstep import compare_speed_pairs

    monkeypatch.setenv("TWINBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("TWINBENCH_TRAIN_THREADS", "2")
    monkeypatch.setenv("TWINBENCH_TRAIN_INTEROP_THREADS", "2")
    spec = tpb.JobSpec(model="lenet5", dataset="synthetic", batch_size=32, warmup_steps=2)
    options = LockstepOptions(block_pairs=2, block_steps=8, calibration_steps=4,
                              disturbance_limit=math.inf)  # fmt: skip
    record, lines = compare_speed_pairs(
        load_settings(), ("torch", "tf"), ("torch", "tf"), spec, [(0, 0), (1, 1)], 0.95, options,
    )  # fmt: skip
    pps = record["process_pairs"]
    assert [pp["failed"] for pp in pps] == [None, None]
    assert [pp["start_order"] for pp in pps] == [[0, 1], [1, 0]]  # the starting arm alternates
    for pp in pps:
        torch_job, tf_job = pp["jobs"]
        assert torch_job["cpu_set"] == tf_job["cpu_set"] and torch_job["cpu_set"]
        assert torch_job["threads"] == tf_job["threads"] == [2, 2]
        assert [torch_job["outcome"], tf_job["outcome"]] == ["cancelled", "cancelled"]
        for block in all_blocks(pp):
            assert block["parked"]["cpu_s"] == 0.0 and block["parked"]["context_switches"] == 0
            assert block["steps"] in (4, 8) and block["samples"] == 32 * block["steps"]
    assert record["summary"]["parked_cpu_s_max"] == 0.0
    assert record["summary"]["threads"] == [[2], [2]]  # as read back, in the report's note
    assert "intra-op threads 2/2" in record["summary"]["note"]
    (line,) = lines
    assert line.estimate.repeats == 2 and "process pairs" in line.detail


def test_a_jax_arm_is_parked_as_whole_as_a_torch_one(tmp_path, monkeypatch):
    """torch against jax in one process pair: XLA's thread pool stops with its process like
    PyTorch's, and JAX records the CPU set as its intra-op threads (it has no thread setting)."""
    pytest.importorskip("jax")
    from twinbench.config import load_settings
    from twinbench.experiments.lockstep import compare_speed_pairs

    monkeypatch.setenv("TWINBENCH_HOME", str(tmp_path))
    spec = tpb.JobSpec(model="lenet5", dataset="synthetic", batch_size=32, warmup_steps=2)
    options = LockstepOptions(block_pairs=2, block_steps=8, calibration_steps=4,
                              disturbance_limit=math.inf)  # fmt: skip
    record, lines = compare_speed_pairs(
        load_settings(), ("torch", "jax"), ("torch", "jax"), spec, [(0, 0)], 0.95, options,
    )  # fmt: skip
    (pp,) = record["process_pairs"]
    assert pp["failed"] is None
    torch_job, jax_job = pp["jobs"]
    assert torch_job["cpu_set"] == jax_job["cpu_set"] and jax_job["cpu_set"]
    assert jax_job["threads"] == [len(jax_job["cpu_set"]), 1]
    for block in all_blocks(pp):
        assert block["parked"]["cpu_s"] == 0.0 and block["parked"]["context_switches"] == 0
        assert block["samples"] == 32 * block["steps"] > 0
    (line,) = lines
    assert line.estimate.repeats == 1


def test_compare_speed_pairs_say_why_they_cannot_run(monkeypatch):
    from twinbench.experiments import lockstep

    monkeypatch.setattr(lockstep, "unavailable", lambda frameworks, models: "no room here")
    record, lines = lockstep.compare_speed_pairs(
        None, ("torch", "tf"), ("torch", "tf"), tpb.JobSpec(model="lenet5"), [(0, 0)], 0.95,
        progress=lambda text: None,
    )  # fmt: skip
    assert record == {"unavailable": "no room here"} and lines == []


# The bench, on stand-in workers.


def test_the_lockstep_bench_reports_its_pairs_discards_and_preflight(monkeypatch):
    from twinbench.experiments import lockstep
    from twinbench.experiments.bench_training import BenchOptions, report_pages, table_rows

    monkeypatch.setattr(lockstep, "starter", lambda settings, fw, spec, label, *t: fake_arm(label))
    bench = BenchOptions(models=("lenet5",), repeats=2, warmup_steps=1)
    quiet = LockstepOptions(block_pairs=3, block_steps=10, calibration_steps=3,
                            disturbance_limit=math.inf)  # fmt: skip
    results = lockstep.run_lockstep_bench(None, bench, quiet, progress=lambda text: None)
    (row,) = results["rows"]
    assert results["timing"] == "lockstep" and "preflight" in results
    assert [len(runs) for runs in row["runs"].values()] == [2, 2]
    assert row["summary"]["discarded_block_pairs"] == 0
    assert row["summary"]["parked_cpu_s_max"] == 0.0
    (verdict,) = results["verdicts"]
    assert verdict["repeats"] == 2 and verdict["question"].endswith("(lockstep)")
    markdown, _ = report_pages(results)
    assert "Timing: lockstep pairs" in markdown and "0 block pairs discarded" in markdown
    assert "Preflight: " in markdown

    # Every block disturbed: each process pair stops at its cap, and the row says so.
    noisy = LockstepOptions(block_pairs=3, block_steps=10, calibration_steps=3,
                            disturbance_limit=-1.0, max_discards=1)  # fmt: skip
    results = lockstep.run_lockstep_bench(None, bench, noisy, progress=lambda text: None)
    (row,) = results["rows"]
    assert results["verdicts"] == [] and row["summary"]["too_disturbed"] == 2
    assert row["summary"]["discarded_block_pairs"] == 4
    headers, cells = table_rows(results)
    assert cells[0][headers.index("verdict")] == "too disturbed"
    assert "4 block pairs discarded" in report_pages(results)[0]


# The command.


def test_bench_training_lockstep_runs_without_services_and_falls_back_when_it_cannot(
    tmp_path, monkeypatch, capsys
):
    from twinbench.cli import experiments as cli
    from twinbench.cli import main as cli_main
    from twinbench.experiments import bench_training, lockstep

    args = cli_main.parser().parse_args(
        ["bench", "training", "--model", "lenet5", "--lockstep", "--repeats", "2",
         "--modes", "default", "--reports", str(tmp_path)]
    )  # fmt: skip
    args.argv = ["bench", "training", "--lockstep"]
    assert cli_main.command_name(args) == "bench training --lockstep"
    assert cli_main.ON_THEIR_OWN["bench training --lockstep"] is cli.cmd_bench_lockstep
    assert (args.block_pairs, args.block_seconds, args.block_steps) == (10, 0.5, None)

    # Where both arms cannot run here: sequential jobs on the services, and the report says why.
    monkeypatch.setattr(lockstep, "unavailable", lambda frameworks, models: "no room here")
    started = []

    class Services:
        def __init__(self, settings, gateway, frameworks=None):
            started.append(gateway)

        def __enter__(self):
            return "127.0.0.1:1", None

        def __exit__(self, *exc):
            return False

    def sequential(client, options):
        return {"options": dict(options.__dict__), "rows": [], "verdicts": [],
                "environment": {"cpu": "x", "cpu_count": 2}, "published_hardware": "",
                "created": "now", "timing": "sequential",
                "preflight": {"quiet": True, "warnings": []}}  # fmt: skip

    monkeypatch.setattr(cli, "services", Services)
    monkeypatch.setattr(
        cli, "Client", lambda address, settings: type("C", (), {"close": lambda s: None})()
    )
    monkeypatch.setattr(bench_training, "run_training_bench", sequential)
    assert cli.cmd_bench_lockstep(None, args) == 0
    assert started == [args.gateway]
    assert "lockstep: no room here" in capsys.readouterr().err
    (report,) = tmp_path.glob("*-bench-training/bench-training.md")
    text = report.read_text()
    assert "lockstep was asked for: no room here" in text and "Preflight: quiet" in text
