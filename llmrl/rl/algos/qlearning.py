"""Tabular Q-learning (Watkins 1989) with epsilon-greedy exploration and a step-size schedule.

For discrete observation spaces (FrozenLake). Each update steps `num_envs`
environments once and applies
  Q(s, a) += alpha_t [r + gamma (1 - terminated) max_a' Q(s', a') - Q(s, a)],
averaging the TD errors of environments that hit the same (s, a) in one step.
A time-limit truncation bootstraps from the final state; a terminal does not.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from llmrl.config import ConfigError, check_enum, check_positive
from llmrl.rl import rollout
from llmrl.rl.algos import base
from llmrl.rl.algos.exploration import epsilon_greedy, greedy, linear_schedule
from llmrl.rl.envs import is_discrete


def default_config() -> ml_collections.ConfigDict:
  """`config.algo` for tabular Q-learning."""
  c = ml_collections.ConfigDict()
  c.name = "qlearning"
  c.num_envs = 16
  c.gamma = 0.99
  c.learning_rate = 0.1          # alpha at the start
  c.learning_rate_end = 0.01     # alpha at the end ("linear") / floor ("inverse")
  c.lr_schedule = "linear"       # "constant", "linear" (over training) or "inverse"
  c.eps_start = 1.0
  c.eps_end = 0.05
  c.exploration_fraction = 0.5   # of training over which epsilon decays linearly
  return c


@struct.dataclass
class QState:
  q: jax.Array           # [states, actions]
  env_state: Any
  obs: jax.Array         # [num_envs] state indices
  rng: jax.Array
  step: jax.Array        # updates done


def make(c: ml_collections.ConfigDict, env, env_params, total_steps: int) -> base.Algorithm:
  base.require_discrete_actions("qlearning", env, env_params)
  o_space = env.observation_space(env_params)
  if not is_discrete(o_space):
    raise ConfigError(
        f"config.algo.name='qlearning' is tabular and needs discrete observations, but "
        f"{env.name} observes a continuous Box; use FrozenLake-v1, or dqn for this env.")
  check_positive("algo.num_envs", c.num_envs)
  check_positive("algo.learning_rate", c.learning_rate)
  check_enum("algo.lr_schedule", c.lr_schedule, ["constant", "linear", "inverse"])
  num_states, num_actions = int(o_space.n), int(env.action_space(env_params).n)
  runner = rollout.EnvRunner.create(env, env_params, c.num_envs)
  num_updates = max(total_steps // c.num_envs, 1)

  def alpha(t):
    if c.lr_schedule == "constant":
      return jnp.float32(c.learning_rate)
    if c.lr_schedule == "linear":
      return linear_schedule(c.learning_rate, c.learning_rate_end, num_updates, t)
    return jnp.maximum(c.learning_rate / (1.0 + t / 1000.0), c.learning_rate_end)

  def init(key):
    k_env, rng = jax.random.split(key)
    obs, env_state = runner.reset(k_env)
    return QState(jnp.zeros((num_states, num_actions)), env_state, obs, rng, jnp.int32(0))

  def update(s: QState):
    rng, k_act, k_env = jax.random.split(s.rng, 3)
    eps = linear_schedule(c.eps_start, c.eps_end, c.exploration_fraction * num_updates, s.step)
    action = epsilon_greedy(s.q[s.obs], k_act, eps)
    next_obs, env_state, reward, terminated, truncated, info = runner.step(
        jax.random.split(k_env, c.num_envs), s.env_state, action)
    target = reward + c.gamma * (1.0 - terminated) * jnp.max(s.q[info["final_obs"]], -1)
    td = target - s.q[s.obs, action]
    # Average simultaneous updates of the same (s, a).
    td_sum = jnp.zeros_like(s.q).at[s.obs, action].add(td)
    count = jnp.zeros_like(s.q).at[s.obs, action].add(1.0)
    lr = alpha(s.step)
    q = s.q + lr * td_sum / jnp.maximum(count, 1.0)
    done = terminated | truncated
    metrics = {"q/td_abs": jnp.mean(jnp.abs(td)), "q/epsilon": eps, "q/alpha": lr,
               "sum/episode_return": jnp.sum(info["episode_return"]),
               "sum/episode_length": jnp.sum(info["episode_length"]).astype(jnp.float32),
               "sum/episodes": jnp.sum(done).astype(jnp.float32)}
    return QState(q, env_state, next_obs, rng, s.step + 1), metrics

  def act(s: QState, obs, key, greedy_eval: bool):
    q = s.q[obs]
    return greedy(q, key) if greedy_eval else epsilon_greedy(q, key, c.eps_end)

  return base.Algorithm(init, update, act, c.num_envs)
