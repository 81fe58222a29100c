"""The lines compare, the DQN comparison and sweeps build: runs that failed, diverged or never
reached a target are results there, counted in the verdict, never dropped."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments import compare_lines
from twinbench.experiments.compare_lines import training_lines
from twinbench.experiments.compare_plan import Arm
from twinbench.experiments.rl_compare import verdict_lines
from twinbench.experiments.sweep_studies import PAIRED, verdict
from twinbench.experiments.verdicts import decide, describe


def _job(framework: str, seed: int, state=tpb.SUCCEEDED, speed=1000.0, **fields) -> tpb.Job:
    job = tpb.Job(id=f"{framework}-{seed}", state=state, **fields)
    job.spec.framework, job.spec.seed, job.spec.model = framework, seed, "mlp"
    job.spec.target_accuracy = 0.9
    if state == tpb.SUCCEEDED:
        job.steady_seconds, job.steady_samples_per_second = 10.0, speed
    else:
        job.error = "worker exited with signal 9"
    return job


def test_compare_counts_runs_that_never_reach_the_target_and_runs_that_fail(monkeypatch):
    """Eight repeats: torch reaches the target at about 20 s in all; TensorFlow reaches it
    later in two, never in five (each run ends at 60 s, censored there) and fails in one. Every
    repeat orders torch first, so the line names torch; the failed job has a line of its own."""
    monkeypatch.setattr(compare_lines, "_test_labels", lambda job, settings: np.zeros(5, int))
    arms = [Arm("torch", "torch", list(range(8))), Arm("tf", "tf", list(range(8)))]
    rng = np.random.default_rng(0)
    for seed in range(8):
        arms[0].jobs.append(
            _job("torch", seed, speed=1000 * rng.lognormal(0, 0.05), target_epoch=2,
                 time_to_target_seconds=20.0 + seed, train_seconds=60.0)
        )  # fmt: skip
        if seed == 7:
            arms[1].jobs.append(_job("tf", seed, state=tpb.FAILED))
        elif seed < 2:
            arms[1].jobs.append(
                _job("tf", seed, target_epoch=3, time_to_target_seconds=30.0 + seed,
                     train_seconds=60.0)
            )  # fmt: skip
        else:
            arms[1].jobs.append(_job("tf", seed, train_seconds=60.0))
    lines = training_lines(arms, settings=None, level=0.95)
    entries = {e["question"].split(" (")[0]: e for e in decide(lines, "cpu")}
    target = entries["faster to 0.9 validation accuracy"]
    assert target["repeats"] == 8 and target["winner"] == "torch"
    assert "reached by both in 2 of 8 repeats; torch alone in 6" in target["detail"]
    assert "8 of 8 pairs whose order is known" in target["method"]
    assert "1 failed or diverged counted as the worst, 5 censored" in target["method"]
    failed = entries["finishes its training jobs"]
    assert failed["repeats"] == 8 and "tf-7 failed: worker exited" in failed["detail"]
    assert not failed["family"] and failed["outcome"] == "inconclusive"
    assert entries["faster to train"]["repeats"] == 7  # the speed of the seven complete pairs


def test_the_dqn_comparison_counts_a_crashed_run_in_a_line_of_its_own():
    arms = [Arm("torch", "torch", list(range(7))), Arm("tf", "tf", list(range(7)))]
    for seed in range(7):
        for arm, solved in ((arms[0], 150 + seed), (arms[1], 0 if seed == 2 else 300 + seed)):
            job = _job(arm.framework, seed, state=tpb.FAILED if not solved else tpb.SUCCEEDED)
            job.reinforcement.episodes_to_solve = solved
            job.reinforcement.seconds_to_solve = 1.5 * solved if solved else 0.0
            arm.jobs.append(job)
    entries = decide(verdict_lines(arms, 0.95), "cpu")
    questions = [e["question"] for e in entries]
    assert questions[-1] == "finishes its runs (share of runs that did not fail)"
    episodes, _, failures = entries
    assert "1 of them failed, counted as unsolved: the worst" in episodes["detail"]
    assert "smallest attainable p 0.0156" in episodes["detail"]
    assert episodes["winner"] == "torch"  # seven seeds, torch sooner in each: p = 2 / 128
    assert "tf seed 2: worker exited with signal 9" in failures["detail"]
    assert "outside Holm's family" in describe(failures)


def _sweep_studies(points: list[tuple[float, float]]) -> dict[str, optuna.Study]:
    """A torch/tf sweep's studies: each framework's own (empty here) and the paired points."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    for i, values in enumerate(points):
        study.add_trial(
            optuna.trial.create_trial(
                values=list(values), user_attrs={"point": i}, params={}, distributions={}
            )
        )
    return {"torch": optuna.create_study(), "tf": optuna.create_study(), PAIRED: study}


def test_sweep_points_where_one_side_diverged_count_as_its_worst():
    """Eight paired points: TensorFlow diverged at six of them, and the other two are a tie.
    Dropping the diverged pairs would leave a tie on two points; counting them, torch has the
    lower loss at every point that has an order."""
    tie = [(0.40, 0.40), (0.35, 0.35)]
    studies = _sweep_studies([(0.3 + 0.01 * i, math.inf) for i in range(6)] + tie)
    cross = [
        {
            "settings_of": "torch",
            "repeats": [{"val_loss": {"torch": 0.3, "tf": None}},
                        {"val_loss": {"torch": 0.31, "tf": 0.32}}],
        }
    ]  # fmt: skip
    paired, crossed = verdict(studies, cross, "cpu", 0.95)
    assert paired["repeats"] == 8 and paired["winner"] == "torch"
    assert "6 diverged runs counted as the worst" in paired["detail"]
    assert crossed["repeats"] == 2 and "1 failed or diverged runs counted" in crossed["detail"]


def test_a_sweep_with_every_figure_there_is_a_paired_t_on_log_ratios():
    rng = np.random.default_rng(1)
    points = [(float(x), float(x * rng.lognormal(0, 0.01))) for x in rng.uniform(0.3, 0.5, 6)]
    (paired,) = verdict(_sweep_studies(points), [], "cpu", 0.95)
    assert paired["method"].startswith("paired t on log ratios, 6 pairs")
    assert paired["detectable"] == pytest.approx(paired["detectable"]) and paired["power"] == 0.8


@pytest.mark.parametrize("schema", ["results-v3", "sweep-v1"])
def test_every_kind_of_verdict_entry_matches_the_results_schemas(schema):
    import json
    from pathlib import Path

    import jsonschema

    from twinbench.experiments.rl_verdicts import paired_iqm_ratio
    from twinbench.experiments.verdicts import (
        Line,
        accuracy_ratio,
        failed_runs,
        paired_ratio,
        paired_with_failures,
    )

    rng = np.random.default_rng(2)
    lines = [
        Line("speed", "a", "b", paired_ratio([100.0, 101.0, 99.0], [90.0, 92.0, 91.0]), True),
        Line("one", "a", "b", paired_ratio([100.0], [90.0], [[99.0, 101.0]], [[89.0, 91.0]]), True),
        Line("acc", "a", "b", accuracy_ratio(rng.random((3, 50)) < 0.9, rng.random((3, 50)) < 0.9),
             True),
        Line("acc one", "a", "b", accuracy_ratio(rng.random((1, 50)) < 0.9,
                                                 rng.random((1, 50)) < 0.9), True),
        Line("dqn", "a", "b", paired_iqm_ratio([100.0, 120.0, 130.0], [150.0, 160.0, math.inf]),
             False),
        Line("loss", "a", "b", paired_with_failures([0.3, 0.4, math.inf], [0.35, 0.41, 0.5]), False),
        Line("failed", "a", "b", failed_runs([True, False, False], [False, False, False]), True),
    ]  # fmt: skip
    entries = json.loads(json.dumps(decide(lines, "cpu")))
    path = Path(__file__).parent.parent / "twinbench" / "schemas" / f"{schema}.schema.json"
    item = json.loads(path.read_text())["properties"]["verdict"]["items"]
    for entry in entries:
        jsonschema.validate(entry, item)
    assert entries[3]["detectable_points"] is None and entries[1]["min_p"] == 1.0
