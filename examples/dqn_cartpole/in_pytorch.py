"""DQN on CartPole-v1 in PyTorch: learn to balance the pole, save, load, act on one state."""

import argparse
import random
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--steps", type=int, default=100_000, help="environment steps at most")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--smoke", action="store_true", help="a few hundred steps")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
steps, warmup, every = (300, 64, 32) if args.smoke else (args.steps, 1000, 256)

random.seed(args.seed)
torch.manual_seed(args.seed)
env, eval_env = gym.make("CartPole-v1"), gym.make("CartPole-v1")


def q_network() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
    )


def greedy_mean_reward(episodes: int) -> float:
    """The policy without exploration: CartPole is solved when it averages 475 over 100."""
    total = 0.0
    for i in range(episodes):
        state, _ = eval_env.reset(seed=10_000 + i)
        done = False
        while not done:
            with torch.no_grad():
                action = policy(torch.tensor(state)).argmax().item()
            state, reward, terminated, truncated, _ = eval_env.step(action)
            total, done = total + reward, terminated or truncated
    return total / episodes


policy, target = q_network(), q_network()
target.load_state_dict(policy.state_dict())
optimizer = torch.optim.Adam(policy.parameters(), lr=0.0005)
memory = deque(maxlen=100_000)
rewards, episode_reward = [], 0.0
state, _ = env.reset(seed=args.seed)

for step in range(steps):
    epsilon = max(0.04, 1.0 - step / 8_000)
    if random.random() < epsilon:
        action = env.action_space.sample()
    else:
        with torch.no_grad():
            action = policy(torch.tensor(state)).argmax().item()
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
        target.load_state_dict(policy.state_dict())
        for _ in range(every // 2):
            batch = random.sample(memory, 64)
            states, actions, batch_rewards, next_states, dones = map(
                np.array, zip(*batch, strict=True)
            )
            with torch.no_grad():
                best_next = target(torch.tensor(next_states)).max(1).values
            targets = torch.tensor(batch_rewards, dtype=torch.float32) + 0.99 * best_next * (
                1 - torch.tensor(dones, dtype=torch.float32)
            )
            q = policy(torch.tensor(states)).gather(1, torch.tensor(actions).unsqueeze(1))
            loss = nn.functional.smooth_l1_loss(q.squeeze(1), targets)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), 10)
            optimizer.step()

path = args.out / "dqn_cartpole.pt"
torch.save(policy.state_dict(), path)
policy = q_network()
policy.load_state_dict(torch.load(path))
state, _ = env.reset(seed=args.seed)
with torch.no_grad():
    action = policy(torch.tensor(state)).argmax().item()
print(f"loaded {path}: predicted {action} for one state")
episodes = 3 if args.smoke else 100
print(f"greedy mean reward over {episodes} episodes: {greedy_mean_reward(episodes):.1f}")
