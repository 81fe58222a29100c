"""DQN on CartPole-v1 in Keras: learn to balance the pole, save, load, act on one state."""

import argparse
import random
from collections import deque
from pathlib import Path

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--steps", type=int, default=100_000, help="environment steps at most")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--smoke", action="store_true", help="a few hundred steps")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
steps, warmup, every = (300, 64, 32) if args.smoke else (args.steps, 1000, 256)

random.seed(args.seed)
keras.utils.set_random_seed(args.seed)
env, eval_env = gym.make("CartPole-v1"), gym.make("CartPole-v1")


def q_network() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(2),
        ]
    )


def greedy_mean_reward(episodes: int) -> float:
    """The policy without exploration: CartPole is solved when it averages 475 over 100."""
    total = 0.0
    for i in range(episodes):
        state, _ = eval_env.reset(seed=10_000 + i)
        done = False
        while not done:
            action = int(tf.argmax(policy(state[None])[0]))
            state, reward, terminated, truncated, _ = eval_env.step(action)
            total, done = total + reward, terminated or truncated
    return total / episodes


policy, target = q_network(), q_network()
target.set_weights(policy.get_weights())
optimizer = keras.optimizers.Adam(0.0005, global_clipnorm=10)
loss_fn = keras.losses.Huber()
memory = deque(maxlen=100_000)
rewards, episode_reward = [], 0.0
state, _ = env.reset(seed=args.seed)


@tf.function
def train_step(states, actions, batch_rewards, next_states, dones):
    targets = batch_rewards + 0.99 * tf.reduce_max(target(next_states), axis=1) * (1 - dones)
    with tf.GradientTape() as tape:
        q = tf.gather(policy(states), actions, axis=1, batch_dims=1)
        loss = loss_fn(targets, q)
    grads = tape.gradient(loss, policy.trainable_variables)
    optimizer.apply_gradients(zip(grads, policy.trainable_variables, strict=True))


for step in range(steps):
    epsilon = max(0.04, 1.0 - step / 8_000)
    if random.random() < epsilon:
        action = env.action_space.sample()
    else:
        action = int(tf.argmax(policy(state[None])[0]))
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
        target.set_weights(policy.get_weights())
        for _ in range(every // 2):
            batch = random.sample(memory, 64)
            states, actions, batch_rewards, next_states, dones = map(
                np.array, zip(*batch, strict=True)
            )
            train_step(
                states,
                actions,
                batch_rewards.astype("float32"),
                next_states,
                dones.astype("float32"),
            )

path = args.out / "dqn_cartpole.keras"
policy.save(path)
policy = keras.models.load_model(path)
state, _ = env.reset(seed=args.seed)
action = int(policy.predict(state[None], verbose=0).argmax())
print(f"loaded {path}: predicted {action} for one state")
episodes = 3 if args.smoke else 100
print(f"greedy mean reward over {episodes} episodes: {greedy_mean_reward(episodes):.1f}")
