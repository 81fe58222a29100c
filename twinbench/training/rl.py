"""Deep Q-learning on a Gymnasium environment, the same loop for both frameworks.

Everything but the network is here, once: the environment and its seeds, the replay buffer and
the rows it samples, the epsilon schedule and its random draws, the TD targets (Bellman backups
through the target network's Q-values), when the target network is copied, and what counts as
solved (the greedy policy's evaluation on fixed episodes). So both frameworks see the same
episodes, transition for transition, until their networks first rank the two actions
differently; from there their trajectories part (as supervised training's part after a few
steps: float sums in different orders).

A framework supplies a `QSession`: the online network's Q-values, the target network's, one
optimizer step on the Huber loss between Q(s, a) and the given targets, and the target copy.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Protocol

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import Settings
from twinbench.data.datasets import Dataset, Split
from twinbench.errors import InvalidArgument
from twinbench.jobs.context import JobContext
from twinbench.jobs.request import job_model
from twinbench.models.spec import DQN, ModelSpec
from twinbench.serving.repository import ModelRepository

# Huber (smooth L1) with delta 1, mean over the batch: PyTorch's smooth_l1_loss and Keras's
# Huber() compute the same function with these defaults.
TD_LOSS = (
    "Huber loss (delta 1, mean over the batch) between Q(s, a) and r + gamma max_a' Q'(s', a')"
)
RL_FAIRNESS = {
    "environment": "one Gymnasium environment in shared code, reset with the job's seed",
    "exploration": "epsilon-greedy; the epsilon draws and random actions from one seeded"
    " generator in shared code",
    "replay": "one replay buffer in shared code; the sampled rows from the shared generator",
    "targets": "TD targets computed in shared code from the target network's Q-values",
    "loss": TD_LOSS,
    "timing": "network time (acting, targets, optimizer steps) and environment time apart",
    "solved": "the greedy policy's mean reward over 100 fixed evaluation episodes (seeds from"
    " the job's) reaches 475, evaluated in shared code, in batches of states",
}
PROGRESS_EVERY = 50  # environment steps between progress reports
RECORD_EVERY = 10  # episodes between updates of the job record (`twinbench jobs --show` mid-run)


class QSession(Protocol):
    device_name: str
    parameter_count: int

    def q_values(self, states: np.ndarray) -> np.ndarray:
        """The online network's Q-values, batch x actions."""

    def target_q_values(self, states: np.ndarray) -> np.ndarray:
        """The target network's Q-values, batch x actions."""

    def train_step(self, states: np.ndarray, actions: np.ndarray, targets: np.ndarray) -> float:
        """One optimizer step on the TD loss; returns the batch's loss."""

    def update_target(self) -> None:
        """Copies the online network's weights into the target network."""

    # What exports need, as a supervised session has them.
    def prepare(self, x: np.ndarray) -> np.ndarray: ...
    def predict(self, x: np.ndarray) -> np.ndarray: ...
    def export(self, fmt: str, path) -> None: ...
    def peak_gpu_bytes(self) -> int: ...
    def fairness(self) -> dict[str, str]: ...


class ReplayBuffer:
    """A ring of the last `capacity` transitions, as arrays."""

    def __init__(self, capacity: int, state_size: int) -> None:
        self.capacity = capacity
        self.states = np.zeros((capacity, state_size), np.float32)
        self.next_states = np.zeros((capacity, state_size), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        # Terminal, not truncated: a time limit ends the episode but the state still has a value.
        self.terminal = np.zeros(capacity, np.float32)
        self.size = self.next = 0

    def add(self, state, action: int, reward: float, next_state, terminal: bool) -> None:
        i = self.next
        self.states[i], self.actions[i], self.rewards[i] = state, action, reward
        self.next_states[i], self.terminal[i] = next_state, terminal
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        return rng.integers(0, self.size, batch)


def epsilon_at(step: int, rl: DQN) -> float:
    """The linear schedule: from epsilon_start to epsilon_end over epsilon_steps, then flat."""
    fraction = min(1.0, step / max(1, rl.epsilon_steps))
    return rl.epsilon_start + fraction * (rl.epsilon_end - rl.epsilon_start)


def td_targets(
    rewards, terminal, next_q: np.ndarray, gamma: float, next_online: np.ndarray | None = None
) -> np.ndarray:
    """r + gamma Q'(s', a*) where s' is not terminal. Double DQN (van Hasselt et al., 2016):
    a* is the online network's best action and Q' the target network's value of it, which
    curbs the overestimation of max Q'; without `next_online`, a* is the target's own best."""
    best = (next_online if next_online is not None else next_q).argmax(axis=1)
    value = next_q[np.arange(len(next_q)), best]
    return (rewards + gamma * (1.0 - terminal) * value).astype(np.float32)


def worth_evaluating(rewards: list[float], rl: DQN) -> bool:
    """The last `evaluation_gate` training episodes reach the threshold on average: only then
    can the greedy policy plausibly hold it, so only then is it evaluated."""
    window = rewards[-rl.evaluation_gate :]
    return len(window) == rl.evaluation_gate and float(np.mean(window)) >= rl.solve_threshold


def evaluate_greedy(session: QSession, rl: DQN, seed: int) -> tuple[list[float], int]:
    """The policy as it stands, greedy (no exploration, no learning), on `solve_window` fixed
    episodes. CartPole-v1 is solved when a policy averages 475 over 100 consecutive trials:
    asked of the training episodes, the criterion would also judge the exploration's random
    actions, and a policy that changes every few hundred steps. The episodes' seeds come from
    the job's seed, so every evaluation of a job, in either framework, plays the same starts.

    The episodes run side by side, one batch of states through the network per step (a few
    hundred calls, not tens of thousands), and stop as soon as the mean can no longer reach the
    threshold. Returns every episode's reward (an unfinished one's so far) and the environment
    steps taken."""
    seeds = np.random.default_rng([seed, 0xE7A1]).integers(0, 2**31 - 1, rl.solve_window)
    envs = [make_env(rl) for _ in seeds]
    states = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds, strict=True)])
    rewards = np.zeros(len(envs))
    running = np.ones(len(envs), bool)
    needed, steps = rl.solve_threshold * len(envs), 0
    while running.any():
        # The best the evaluation can still do: every running episode to the maximum.
        if rewards[~running].sum() + rl.max_episode_reward * running.sum() < needed:
            break
        active = np.flatnonzero(running)
        actions = session.q_values(states[active].astype(np.float32)).argmax(axis=1)
        for i, action in zip(active, actions, strict=True):
            states[i], reward, terminated, truncated, _ = envs[i].step(int(action))
            rewards[i] += float(reward)
            running[i] = not (terminated or truncated)
            steps += 1
    return rewards.tolist(), steps


def passes(evaluation: list[float], rl: DQN) -> bool:
    return float(np.mean(evaluation)) >= rl.solve_threshold


def make_env(rl: DQN):
    import gymnasium

    return gymnasium.make(rl.environment)


def run_reinforcement(
    framework,
    repository: ModelRepository,
    settings: Settings,
    job: tpb.Job,
    ctx: JobContext,
    rss,
    beside,
) -> None:
    """A DQN job: learn until solved or out of budget, record it, export the Q-network.
    `rss` and `beside` are the training loop's PeakRss and ActiveJobs (twinbench.training.loop)."""
    from twinbench.models.tasks import task_for
    from twinbench.training.resources import current_rss_bytes
    from twinbench.training.session import SHARED_FAIRNESS, export_checked, record_export

    spec = job.spec
    model = job_model(spec)
    if not isinstance(model, ModelSpec):
        raise InvalidArgument(f"{spec.model} is not a Q-network: it cannot train by reinforcement")
    rl = model.reinforcement
    assert rl is not None
    env = make_env(rl)
    (state_size,) = env.observation_space.shape
    if (state_size,) != model.input_shape or env.action_space.n != model.num_classes:
        raise InvalidArgument(
            f"{rl.environment} has {state_size} observations and {env.action_space.n} actions;"
            f" {model.name} takes {model.input_shape} and gives {model.num_classes}"
        )
    session = framework.new_rl_session(spec, model)
    shared = {k: v for k, v in SHARED_FAIRNESS.items() if k in ("isolation",)}

    def started(j: tpb.Job) -> None:
        j.device = session.device_name
        j.framework_version = framework.version
        j.parameter_count = session.parameter_count
        j.num_classes = model.num_classes
        j.fairness.update({**shared, **RL_FAIRNESS, **session.fairness()})
        j.reinforcement.environment = rl.environment
        j.reinforcement.solve_threshold = rl.solve_threshold
        j.reinforcement.solve_window = rl.solve_window

    ctx.update(started)
    result = dqn_loop(session, env, rl, spec, ctx, beside)

    def finished(j: tpb.Job) -> None:
        r = j.reinforcement
        r.episode_rewards[:] = result.rewards
        r.env_steps = result.steps
        r.episodes_to_solve = result.episodes_to_solve
        r.steps_to_solve = result.steps_to_solve
        r.seconds_to_solve = result.seconds_to_solve
        r.steps_per_second = result.steps / max(result.seconds - result.evaluation_seconds, 1e-12)
        r.network_seconds = result.network_seconds
        r.environment_seconds = result.environment_seconds
        r.optimizer_steps = result.optimizer_steps
        r.evaluations = result.evaluations
        r.evaluation_rewards[:] = result.evaluation_rewards
        r.evaluation_env_steps = result.evaluation_env_steps
        r.evaluation_seconds = result.evaluation_seconds
        j.train_seconds = result.seconds
        j.peak_rss_bytes = max(rss.peak, current_rss_bytes())
        j.peak_gpu_bytes = session.peak_gpu_bytes()
        j.overlapped_jobs[:] = sorted(beside.seen)

    ctx.update(finished)
    if spec.skip_export:
        return
    # The export check runs on states the agent saw: the Q-network's real inputs.
    states = result.buffer.states[: min(result.buffer.size, 64)]
    rows = Split(states, np.zeros(len(states), np.int64))
    data = Dataset(rl.environment, rows, rows, rows, rl.actions)
    task = task_for(model)  # one vector in, one value per action out: as a classifier's
    for fmt in spec.export_formats:
        ctx.check_cancelled()
        export = export_checked(
            framework, session, repository, job, data, task, fmt, settings.max_batch_size
        )
        ctx.update(partial(record_export, export=export))


class LoopResult:
    def __init__(self, buffer: ReplayBuffer) -> None:
        self.buffer = buffer
        self.rewards: list[float] = []
        self.steps = self.optimizer_steps = 0
        self.episodes_to_solve = self.steps_to_solve = 0
        self.seconds = self.seconds_to_solve = 0.0
        self.network_seconds = self.environment_seconds = 0.0
        self.evaluations = self.evaluation_env_steps = 0
        self.evaluation_rewards: list[float] = []
        self.evaluation_seconds = 0.0


def dqn_loop(
    session: QSession, env, rl: DQN, spec: tpb.JobSpec, ctx: JobContext, beside=None
) -> LoopResult:
    """Steps the environment until solved or `spec.env_steps`; the framework only runs the net."""
    rng = np.random.default_rng([spec.seed, 0xD01])
    buffer = ReplayBuffer(rl.buffer_size, model_inputs(env))
    out = LoopResult(buffer)
    clock = time.perf_counter
    start = clock()
    t = clock()
    state, _ = env.reset(seed=int(spec.seed))
    env.action_space.seed(int(spec.seed))
    out.environment_seconds += clock() - t
    episode_reward, losses = 0.0, []
    evaluated_after = -1  # optimizer steps when the greedy policy was last evaluated
    for step in range(spec.env_steps):
        ctx.check_cancelled()
        if rng.random() < epsilon_at(step, rl):
            action = int(rng.integers(0, env.action_space.n))
        else:
            t = clock()
            action = int(np.argmax(session.q_values(state[None].astype(np.float32))[0]))
            out.network_seconds += clock() - t
        t = clock()
        next_state, reward, terminated, truncated, _ = env.step(action)
        out.environment_seconds += clock() - t
        buffer.add(state, action, float(reward), next_state, bool(terminated))
        state, episode_reward = next_state, episode_reward + float(reward)
        out.steps = step + 1
        if (step + 1) % rl.target_update_steps == 0:
            t = clock()
            session.update_target()
            out.network_seconds += clock() - t
        if step + 1 >= rl.learning_starts and (step + 1) % rl.train_every == 0:
            t = clock()
            for _ in range(rl.gradient_steps):
                losses.append(_optimizer_step(session, buffer, rng, spec.batch_size, rl))
            out.network_seconds += clock() - t
            out.optimizer_steps += rl.gradient_steps
        if terminated or truncated:
            out.rewards.append(episode_reward)
            t = clock()
            state, _ = env.reset()
            out.environment_seconds += clock() - t
            episode_reward = 0.0
            if len(out.rewards) % RECORD_EVERY == 0:
                _record_progress(ctx, out)
            if worth_evaluating(out.rewards, rl) and out.optimizer_steps > evaluated_after:
                evaluated_after = out.optimizer_steps  # the same network is not evaluated twice
                t = clock()
                out.evaluation_rewards, steps_played = evaluate_greedy(session, rl, spec.seed)
                out.evaluation_seconds += clock() - t
                out.evaluations += 1
                out.evaluation_env_steps += steps_played
                if passes(out.evaluation_rewards, rl):
                    out.episodes_to_solve, out.steps_to_solve = len(out.rewards), step + 1
                    out.seconds_to_solve = clock() - start
                    break
        if (step + 1) % PROGRESS_EVERY == 0:
            mean_loss = float(np.mean(losses)) if losses else 0.0
            losses.clear()
            ctx.progress(len(out.rewards) + 1, step + 1, spec.env_steps, mean_loss)
            if beside is not None:
                beside.check(every_s=1.0)
    out.seconds = clock() - start
    return out


def _optimizer_step(
    session: QSession, buffer: ReplayBuffer, rng: np.random.Generator, batch: int, rl: DQN
) -> float:
    """One TD step: a batch from the buffer, its targets here, the update in the framework."""
    rows = buffer.sample(rng, batch)
    next_states = buffer.next_states[rows]
    next_q = session.target_q_values(next_states)
    next_online = session.q_values(next_states) if rl.double else None
    targets = td_targets(buffer.rewards[rows], buffer.terminal[rows], next_q, rl.gamma, next_online)
    return session.train_step(buffer.states[rows], buffer.actions[rows], targets)


def _record_progress(ctx: JobContext, out: LoopResult) -> None:
    """What `twinbench jobs --show` reads of a running job: its episodes so far, the steps of
    the environment and of the optimizer, and its evaluations."""
    rewards, steps, updates = list(out.rewards), out.steps, out.optimizer_steps
    evaluations, evaluation = out.evaluations, list(out.evaluation_rewards)

    def update(j: tpb.Job) -> None:
        r = j.reinforcement
        r.episode_rewards[:] = rewards
        r.env_steps, r.optimizer_steps = steps, updates
        r.evaluations = evaluations
        r.evaluation_rewards[:] = evaluation

    ctx.update(update)


def model_inputs(env) -> int:
    return int(np.prod(env.observation_space.shape))
