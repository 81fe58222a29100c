"""DQN on CartPole-v1 in JAX (Flax NNX, Optax): learn to balance the pole, save, load, act on one state."""

import argparse
import random
from collections import deque
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--steps", type=int, default=100_000, help="environment steps at most")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--smoke", action="store_true", help="a few hundred steps")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
steps, warmup, every = (300, 64, 32) if args.smoke else (args.steps, 1000, 256)

random.seed(args.seed)
env, eval_env = gym.make("CartPole-v1"), gym.make("CartPole-v1")


class QNetwork(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(4, 256, rngs=rngs)
        self.hidden2 = nnx.Linear(256, 256, rngs=rngs)
        self.out = nnx.Linear(256, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


@nnx.jit
def greedy_action(policy: QNetwork, state: jax.Array) -> jax.Array:
    return policy(state).argmax()


def greedy_mean_reward(episodes: int) -> float:
    """The policy without exploration: CartPole is solved when it averages 475 over 100."""
    total = 0.0
    for i in range(episodes):
        state, _ = eval_env.reset(seed=10_000 + i)
        done = False
        while not done:
            action = int(greedy_action(policy, state))
            state, reward, terminated, truncated, _ = eval_env.step(action)
            total, done = total + reward, terminated or truncated
    return total / episodes


policy, target = QNetwork(nnx.Rngs(args.seed)), QNetwork(nnx.Rngs(args.seed))
nnx.update(target, nnx.state(policy))
tx = optax.chain(optax.clip_by_global_norm(10), optax.adam(0.0005))
optimizer = nnx.Optimizer(policy, tx, wrt=nnx.Param)
memory = deque(maxlen=100_000)
rewards, episode_reward = [], 0.0
state, _ = env.reset(seed=args.seed)


def loss_fn(policy: QNetwork, states, actions, targets) -> jax.Array:
    q = jnp.take_along_axis(policy(states), actions[:, None], axis=1).squeeze(1)
    return optax.huber_loss(q, targets).mean()  # delta 1: PyTorch's smooth L1, Keras's Huber


@nnx.jit
def train_step(policy, target, optimizer, states, actions, batch_rewards, next_states, dones):
    targets = batch_rewards + 0.99 * target(next_states).max(1) * (1 - dones)
    loss, grads = nnx.value_and_grad(loss_fn)(policy, states, actions, targets)
    optimizer.update(policy, grads)
    return loss


for step in range(steps):
    epsilon = max(0.04, 1.0 - step / 8_000)
    if random.random() < epsilon:
        action = env.action_space.sample()
    else:
        action = int(greedy_action(policy, state))
    next_state, reward, terminated, truncated, _ = env.step(action)
    memory.append((state, action, reward, next_state, terminated))
    state, episode_reward = next_state, episode_reward + reward
    if terminated or truncated:
        rewards.append(episode_reward)
        print(f"episode {len(rewards)}: reward {episode_reward:.0f}, epsilon {epsilon:.2f}")
        state, episode_reward = env.reset()[0], 0.0
        if np.mean(rewards[-10:]) >= 475 and greedy_mean_reward(100) >= 475:
            print(f"solved after {len(rewards)} episodes")
            break

    if len(memory) >= warmup and step % every == 0:  # a burst of updates every 256 steps
        nnx.update(target, nnx.state(policy))
        for _ in range(every // 2):
            batch = random.sample(memory, 64)
            states, actions, batch_rewards, next_states, dones = map(
                np.array, zip(*batch, strict=True)
            )
            train_step(
                policy,
                target,
                optimizer,
                states,
                actions,
                batch_rewards.astype("float32"),
                next_states,
                dones.astype("float32"),
            )

path = (args.out / "dqn_cartpole").absolute()  # Orbax writes a checkpoint folder, named absolutely
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path, nnx.state(policy), force=True)
checkpointer.wait_until_finished()
graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: QNetwork(nnx.Rngs(0))))
policy = nnx.merge(graphdef, checkpointer.restore(path, abstract_state))
state, _ = env.reset(seed=args.seed)
print(f"loaded {path}: predicted {int(greedy_action(policy, state))} for one state")
episodes = 3 if args.smoke else 100
print(f"greedy mean reward over {episodes} episodes: {greedy_mean_reward(episodes):.1f}")
