"""DQN on CartPole: the shared loop's parts, both frameworks on the same episodes, and a job
end to end through the real services (train, record, export, serve 4 floats -> 2 Q-values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import wait_for
from twinbench.api import trainer_pb2 as tpb
from twinbench.errors import InvalidArgument
from twinbench.jobs import job_model, resolve_spec
from twinbench.rl import ReplayBuffer, dqn_loop, epsilon_at, make_env, solved_at, td_targets
from twinbench.specs import DQN
from twinbench.stats import bootstrap_interval, iqm, paired_iqm_ratio


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


def test_solved_needs_a_full_window_at_the_threshold():
    rl = DQN(solve_threshold=475.0, solve_window=3)
    assert not solved_at([500.0, 500.0], rl)
    assert solved_at([10.0, 500.0, 475.0, 450.0 + 50.0], rl)
    assert not solved_at([500.0, 500.0, 400.0], rl)


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
    assert (spec.dataset, spec.env_steps) == ("CartPole-v1", 100_000)
    assert job_model(spec).kind == "reinforcement"
    with pytest.raises(InvalidArgument, match="environment CartPole-v1"):
        resolve_spec(tpb.JobSpec(framework="tf", model="dqn_cartpole", dataset="mnist-5k"))
    with pytest.raises(InvalidArgument, match="env_steps must be"):
        resolve_spec(tpb.JobSpec(framework="tf", model="dqn_cartpole", env_steps=0))
    with pytest.raises(InvalidArgument, match="env_steps is for reinforcement"):
        resolve_spec(tpb.JobSpec(framework="tf", model="lenet5", env_steps=100))


def test_both_frameworks_see_the_same_episodes_from_one_init():
    """Same seed, same shared init: the same exploration draws, and greedy actions from networks
    with the same weights, so the same episodes until the networks first disagree."""
    from services.tf_trainer.q_session import TFQSession
    from services.torch_trainer.q_session import TorchQSession

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
        result = dqn_loop(session(spec, model), make_env(rl), rl, spec, _Ctx())
        assert result.optimizer_steps == 400 - 200 + 1
        rewards[fw] = result.rewards
    # Before any update (200 steps) the two are the same agent; the first episodes match.
    before = next(i for i, s in enumerate(np.cumsum(rewards["torch"])) if s >= 200)
    assert rewards["torch"][:before] == rewards["tf"][:before]
    assert before >= 3


def test_a_dqn_job_runs_end_to_end_through_the_services(client):
    from twinbench.cli import infer_one

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
        assert "Huber" in job.fairness["loss"]
        assert {e.format for e in job.exports} == set(job.spec.export_formats)
        for export in job.exports:
            q = infer_one(client, export.model_name, state)
            assert q.shape == (2,) and np.all(np.isfinite(q))
