"""DQN on CartPole: the shared loop's parts, both frameworks on the same episodes, and a job
end to end through the real services (train, record, export, serve 4 floats -> 2 Q-values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import wait_for
from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.experiments.rl_verdicts import bootstrap_interval, iqm, paired_iqm_ratio
from twinbench.jobs.request import job_model, resolve_spec
from twinbench.models.spec import DQN
from twinbench.training.rl import (
    ReplayBuffer,
    dqn_loop,
    epsilon_at,
    evaluate_greedy,
    make_env,
    passes,
    td_targets,
    worth_evaluating,
)


class _Ctx:
    def __init__(self) -> None:
        self.job = tpb.Job()

    def check_cancelled(self) -> None:
        pass

    def progress(self, *args) -> None:
        pass

    def update(self, change) -> None:
        change(self.job)


def test_epsilon_decays_linearly_then_stays():
    rl = DQN(epsilon_start=1.0, epsilon_end=0.1, epsilon_steps=100)
    assert [epsilon_at(s, rl) for s in (0, 50, 100, 10_000)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_td_targets_bootstrap_only_from_states_that_are_not_terminal():
    next_q = np.array([[1.0, 3.0], [5.0, 2.0]], np.float32)
    targets = td_targets(np.array([1.0, 1.0]), np.array([0.0, 1.0]), next_q, gamma=0.5)
    assert targets.tolist() == [1.0 + 0.5 * 3.0, 1.0]
    # Double DQN: the online network picks the action (0 here), the target network values it.
    online = np.array([[9.0, 0.0], [0.0, 9.0]], np.float32)
    double = td_targets(np.array([1.0, 1.0]), np.array([0.0, 0.0]), next_q, 0.5, online)
    assert double.tolist() == [1.0 + 0.5 * 1.0, 1.0 + 0.5 * 2.0]


def test_replay_buffer_keeps_the_last_transitions():
    buffer = ReplayBuffer(capacity=3, state_size=2)
    for i in range(5):
        buffer.add(np.full(2, i), i % 2, float(i), np.full(2, i + 1), i == 4)
    assert buffer.size == 3 and sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]
    rows = buffer.sample(np.random.default_rng(0), 100)
    assert rows.min() >= 0 and rows.max() < 3


class LinearController:
    """A Q-session's acting part without a network: it pushes the cart the way a weighted sum
    of the state leans (pole angle and its velocity foremost), a policy known to balance
    CartPole, and its opposite."""

    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, np.float32)

    def q_values(self, states: np.ndarray) -> np.ndarray:
        lean = states @ self.weights
        return np.stack([-lean, lean], axis=1)


def test_evaluation_starts_once_training_episodes_reach_the_threshold():
    rl = DQN(solve_threshold=475.0, evaluation_gate=3)
    assert not worth_evaluating([500.0, 500.0], rl)
    assert worth_evaluating([10.0, 500.0, 475.0, 450.0 + 50.0], rl)
    assert not worth_evaluating([500.0, 500.0, 400.0], rl)


def test_the_greedy_evaluation_plays_fixed_episodes_and_stops_once_it_cannot_pass():
    rl = DQN()
    balancing = LinearController([0.1, 0.5, 1.0, 1.0])
    rewards, steps = evaluate_greedy(balancing, rl, seed=0)
    assert rewards == [500.0] * 100 and steps == 50_000 and passes(rewards, rl)
    # The pole angle alone overshoots: short episodes, and the evaluation gives up as soon as
    # the threshold is out of reach, before they all end.
    falling = LinearController([0.0, 0.0, 1.0, 0.0])
    rewards, steps = evaluate_greedy(falling, rl, seed=0)
    assert len(rewards) == 100 and steps == sum(rewards) and not passes(rewards, rl)
    played_out, all_steps = evaluate_greedy(falling, DQN(solve_threshold=0.0), seed=0)
    assert steps < all_steps == sum(played_out) and max(played_out) < 475
    # The same starts every time (the episodes' seeds come from the job's seed).
    assert evaluate_greedy(falling, rl, seed=0) == (rewards, steps)
    assert evaluate_greedy(falling, rl, seed=1) != (rewards, steps)


def test_iqm_and_its_intervals_treat_unsolved_runs_as_censored():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # the middle half: 3..6
    # Two unsolved runs of eight stay in the trimmed quarter: the IQM is finite.
    assert math.isfinite(iqm([10, 11, 12, 13, 14, 15, math.inf, math.inf]))
    assert iqm([10, math.inf, math.inf, math.inf]) == math.inf
    rate, low, high = bootstrap_interval([1, 1, 1, 0, 1, 0, 1, 1, 1, 1], np.mean)
    assert rate == pytest.approx(0.8) and 0.4 <= low <= rate <= high <= 1.0
    faster = paired_iqm_ratio([100, 110, 120, 130, 105, 115], [200, 220, 240, 260, 210, 230])
    assert faster.ratio == pytest.approx(0.5, rel=0.05) and faster.high < 1
    unsolved = paired_iqm_ratio([100, math.inf, math.inf], [100, 120, 130])
    assert math.isnan(unsolved.ratio) and "no ratio" in unsolved.method


def test_specs_of_reinforcement_jobs():
    spec = resolve_spec(tpb.JobSpec(framework="torch", model="dqn_cartpole"))
    assert (spec.dataset, spec.env_steps) == ("CartPole-v1", 200_000)
    assert job_model(spec).kind == "reinforcement"
    with pytest.raises(InvalidArgument, match="environment CartPole-v1"):
        resolve_spec(tpb.JobSpec(framework="tf", model="dqn_cartpole", dataset="mnist-5k"))
    with pytest.raises(InvalidArgument, match="env_steps must be"):
        resolve_spec(tpb.JobSpec(framework="tf", model="dqn_cartpole", env_steps=0))
    for refused in (dict(train_samples=10), dict(resume=True), dict(compiled=True)):
        with pytest.raises(InvalidArgument, match="not supported for dqn_cartpole"):
            resolve_spec(tpb.JobSpec(framework="tf", model="dqn_cartpole", **refused))
    with pytest.raises(InvalidArgument, match="env_steps is for reinforcement"):
        resolve_spec(tpb.JobSpec(framework="tf", model="lenet5", env_steps=100))


def test_both_frameworks_see_the_same_episodes_from_one_init():
    """Same seed, same shared init: the same exploration draws, and greedy actions from networks
    with the same weights, so the same episodes until the networks first disagree."""
    from twinbench.frameworks.tf.q_session import TFQSession
    from twinbench.frameworks.torch.q_session import TorchQSession

    rewards = {}
    for fw, session in (("torch", TorchQSession), ("tf", TFQSession)):
        spec = resolve_spec(
            tpb.JobSpec(framework=fw, model="dqn_cartpole", seed=3, env_steps=400, batch_size=16)
        )
        model = job_model(spec)
        rl = DQN(
            learning_starts=200,
            train_every=1,
            gradient_steps=1,
            epsilon_steps=200,
            epsilon_end=0.5,
            target_update_steps=50,
            double=True,  # the other kind of target, exercised here
        )
        ctx = _Ctx()
        result = dqn_loop(session(spec, model), make_env(rl), rl, spec, ctx)
        assert result.optimizer_steps == 400 - 200 + 1
        rewards[fw] = result.rewards
        # The record a running job shows, as of its last tenth episode: rewards and steps so far.
        shown = ctx.job.reinforcement
        assert len(shown.episode_rewards) == len(result.rewards) // 10 * 10 >= 10
        assert list(shown.episode_rewards) == result.rewards[: len(shown.episode_rewards)]
        assert shown.env_steps == sum(shown.episode_rewards)
        assert 0 < shown.optimizer_steps <= result.optimizer_steps
    # Before any update (200 steps) the two are the same agent; the first episodes match.
    before = next(i for i, s in enumerate(np.cumsum(rewards["torch"])) if s >= 200)
    assert rewards["torch"][:before] == rewards["tf"][:before]
    assert before >= 3


def test_the_loop_stops_when_the_greedy_policy_passes_its_evaluation():
    """A threshold a few steps of CartPole reach: the gate opens, the greedy policy is evaluated
    at most once per state of the network, and the job stops at the first evaluation it passes."""
    from twinbench.frameworks.torch.q_session import TorchQSession

    spec = resolve_spec(
        tpb.JobSpec(framework="torch", model="dqn_cartpole", seed=2, env_steps=5_000)
    )
    rl = DQN(
        learning_starts=100,
        train_every=50,
        gradient_steps=2,
        epsilon_steps=100,
        solve_threshold=9.0,
        solve_window=5,
        evaluation_gate=3,
    )
    result = dqn_loop(TorchQSession(spec, job_model(spec)), make_env(rl), rl, spec, _Ctx())
    assert result.episodes_to_solve == len(result.rewards) and result.steps == result.steps_to_solve
    assert np.mean(result.rewards[-3:]) >= 9.0  # the gate was open when it stopped
    assert len(result.evaluation_rewards) == 5 and np.mean(result.evaluation_rewards) >= 9.0
    bursts = result.optimizer_steps // rl.gradient_steps
    assert 1 <= result.evaluations <= bursts + 1  # + 1: the untrained network, once
    assert result.evaluation_env_steps >= sum(result.evaluation_rewards)
    assert result.evaluation_seconds > 0 and result.seconds_to_solve >= result.evaluation_seconds


def test_a_dqn_job_runs_end_to_end_through_the_services(client, stack):
    import subprocess
    import sys

    from twinbench.client.inference import infer_one

    budget = 1_300  # learning starts at step 1,000: two bursts of 128 optimizer steps
    spec = tpb.JobSpec(framework="both", model="dqn_cartpole", env_steps=budget, seed=1)
    jobs = client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs
    state = make_env(DQN()).reset(seed=0)[0].astype(np.float32)[None]
    for created in jobs:
        job, _ = wait_for(client, created.id)
        assert job.state == tpb.SUCCEEDED, job.error
        r = job.reinforcement
        assert r.environment == "CartPole-v1" and r.env_steps == budget
        assert r.optimizer_steps == 2 * 128  # bursts after steps 1,024 and 1,280
        assert len(r.episode_rewards) >= 5 and sum(r.episode_rewards) <= budget
        assert r.network_seconds > 0 and r.environment_seconds > 0 and r.steps_per_second > 0
        assert (r.solve_threshold, r.solve_window) == (475.0, 100)
        assert r.episodes_to_solve == 0  # far too few steps to solve: recorded as not solved
        assert r.evaluations == 0 and not r.evaluation_rewards  # nor to start evaluating
        assert "Huber" in job.fairness["loss"]
        assert {e.format for e in job.exports} == set(job.spec.export_formats)
        for export in job.exports:
            q = infer_one(client, export.model_name, state)
            assert q.shape == (2,) and np.all(np.isfinite(q))
    listed = subprocess.run(
        [sys.executable, "-m", "twinbench.cli", "--gateway", stack.gateway_address, "jobs"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    for created in jobs:  # a DQN job's result is whether it solved, not a test accuracy
        (row,) = [line for line in listed.splitlines() if line.startswith(created.id)]
        assert "episodes  not solved" in row, listed


def _rl_job(framework: str, seed: int, rewards: list[float], solved_at_episode: int) -> tpb.Job:
    job = tpb.Job(
        id=f"{framework}-{seed:012x}",
        state=tpb.SUCCEEDED,
        spec=tpb.JobSpec(framework=framework, model="dqn_cartpole", seed=seed, env_steps=50_000),
        train_seconds=100.0,
    )
    r = job.reinforcement
    r.episode_rewards.extend(rewards)
    r.env_steps, r.steps_per_second = int(sum(rewards)), 500.0
    r.network_seconds, r.environment_seconds = 80.0, 5.0
    r.episodes_to_solve = solved_at_episode
    r.steps_to_solve = int(sum(rewards[:solved_at_episode])) if solved_at_episode else 0
    r.seconds_to_solve = 90.0 if solved_at_episode else 0.0
    return job


def test_the_rl_comparison_reports_solve_rates_iqms_and_reward_curves(tmp_path):
    import json

    from twinbench.experiments.compare_plan import plan_arms
    from twinbench.experiments.rl_compare import summarize, tables, write_rl_report

    arms = plan_arms(("torch", "tf"), 10, 0)
    for arm in arms:
        for seed in arm.seeds:
            # torch solves every seed at about episode 150, tf at about 300 and misses one seed.
            solved = (
                0
                if arm.framework == "tf" and seed == 4
                else (150 if arm.framework == "torch" else 300) + seed
            )
            arm.jobs.append(_rl_job(arm.framework, seed, [20.0] * 50 + [500.0] * 110, solved))
    torch_summary = summarize(arms[0].jobs, 0.95)
    tf_summary = summarize(arms[1].jobs, 0.95)
    assert torch_summary["solve_rate"][0] == 1.0 and tf_summary["solve_rate"][0] == pytest.approx(
        0.9
    )
    assert torch_summary["iqm_episodes_to_solve"][0] == pytest.approx(154.5, abs=1)
    assert torch_summary["iqm_minutes_to_solve"] == pytest.approx([1.5, 1.5, 1.5])  # 90 s each
    results = {
        "schema": "twinbench.rl-results/v1",
        "created_at": "2026-01-01T00:00:00Z",
        "command": "twinbench compare --model dqn_cartpole",
        "environment": {"cpu": "test"},
        "design": {
            "frameworks": ["torch", "tf"],
            "seeds": {a.label: a.seeds for a in arms},
            "order": ["torch", "tf"],
            "env_steps_budget": 50_000,
            "hardware": "CPU only",
            "level": 0.95,
        },  # fmt: skip
        "arms": {
            a.label: {"framework": a.framework, "summary": summarize(a.jobs, 0.95), "runs": []}
            for a in arms
        },
        "verdict": [],
    }
    from twinbench.experiments.code_size import compare_task
    from twinbench.experiments.rl_compare import run_record

    for a in arms:
        results["arms"][a.label]["runs"] = [run_record(j) for j in a.jobs]
    results["code"] = compare_task("dqn_cartpole", frameworks=[a.framework for a in arms])
    write_rl_report(tmp_path, results)
    assert (tmp_path / "rewards.png").read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "report.md").read_text()
    # One unsolved seed of ten stays in the trimmed quarter: the IQM is finite, but resamples
    # with three or more of it are not, so the interval's top reads "unsolved".
    assert tf_summary["iqm_episodes_to_solve"][0] is not None
    assert "IQM episodes to solve" in page and "to unsolved" in page
    assert "## Code: dqn_cartpole" in page and page.count("```python") == 2
    assert (
        json.loads((tmp_path / "results.json").read_text())["arms"]["tf"]["runs"][4][
            "episodes_to_solve"
        ]
        is None
    )
    assert [t[0].split(" (")[0] for t in tables(results)] == [
        "Results", "Verdict", "Runs", "How it was run",
        "Code: dqn_cartpole as a user writes it in each framework",
    ]  # fmt: skip


def test_rl_compare_runs_seeds_through_the_services(stack, tmp_path):
    """The command end to end on a tiny budget (no run can solve): every seed in both, A B B A."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "twinbench.cli", "--gateway", stack.gateway_address, "compare",
         "--model", "dqn_cartpole", "--repeats", "2", "--env-steps", "300",
         "--reports", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = tmp_path.iterdir()
    results = json.loads((report / "results.json").read_text())
    assert results["design"]["order"] == ["torch", "tf", "tf", "torch"]
    for arm in results["arms"].values():
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        assert all(r["env_steps"] == 300 and r["episodes_to_solve"] is None for r in arm["runs"])
        assert arm["summary"]["solve_rate"][0] == 0.0
    assert results["verdict"][0]["outcome"] == "inconclusive"
    assert (report / "rewards.png").exists() and "Reward curves" in (
        report / "report.html"
    ).read_text()
