"""Deep Q-learning (Mnih et al. 2015): replay buffer, target network, epsilon-greedy.

One update = one step of each of `num_envs` environments (transitions go to
the replay buffer), then, once `learning_starts` environment steps are
stored, `gradient_steps` Adam steps on the Huber TD loss against a target
network, which is copied from the online network every
`target_update_every` updates. `double_dqn` picks the bootstrap action with
the online network (van Hasselt et al. 2016).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from llmrl.config import check_enum, check_positive
from llmrl.rl import replay, rollout
from llmrl.rl.algos import base
from llmrl.rl.algos.exploration import epsilon_greedy, greedy, linear_schedule
from llmrl.rl.networks import ACTIVATIONS, QNetwork


def default_config() -> ml_collections.ConfigDict:
  """`config.algo` for DQN."""
  c = ml_collections.ConfigDict()
  c.name = "dqn"
  c.num_envs = 8
  c.buffer_size = 50_000
  c.batch_size = 128
  c.learning_starts = 1_000       # environment steps before learning
  c.gradient_steps = 1            # per update
  c.learning_rate = 5e-4
  c.anneal_lr = False
  c.max_grad_norm = 10.0
  c.adam_eps = 1e-5
  c.gamma = 0.99
  c.target_update_every = 100     # updates between target-network copies
  c.double_dqn = True
  c.eps_start = 1.0
  c.eps_end = 0.05
  c.exploration_fraction = 0.3
  c.hidden = (64, 64)
  c.activation = "relu"
  return c


@struct.dataclass
class DQNState:
  params: jax.Array
  target: jax.Array
  opt_state: Any
  buffer: replay.ReplayBuffer
  env_state: Any
  obs: jax.Array
  rng: jax.Array
  step: jax.Array


def make(c: ml_collections.ConfigDict, env, env_params, total_steps: int) -> base.Algorithm:
  base.require_discrete_actions("dqn", env, env_params)
  for k in ("num_envs", "buffer_size", "batch_size", "learning_rate", "target_update_every"):
    check_positive(f"algo.{k}", c[k])
  check_enum("algo.activation", c.activation, list(ACTIVATIONS))
  info = base.env_info(env, env_params)
  net = QNetwork(info["action_dim"], tuple(c.hidden), c.activation, info["num_obs_states"])
  runner = rollout.EnvRunner.create(env, env_params, c.num_envs)
  num_updates = max(total_steps // c.num_envs, 1)
  tx = base.adam(c, num_updates * c.gradient_steps)
  obs_dtype = jnp.int32 if info["num_obs_states"] else jnp.float32
  sample_obs = jnp.zeros((1, *info["obs_shape"]), obs_dtype)
  init_params, unravel = base.flat_params(net, sample_obs)
  tree = base.as_tree(unravel)  # p: flat vector, or unravelled outside a loop (bind)
  qvalues = lambda p, o: net.apply({"params": tree(p)}, o)

  def init(key):
    k_net, k_env, rng = jax.random.split(key, 3)
    obs, env_state = runner.reset(k_env)
    params = init_params(k_net)
    example = {"obs": jnp.zeros(info["obs_shape"], obs_dtype), "action": jnp.int32(0),
               "reward": jnp.float32(0), "next_obs": jnp.zeros(info["obs_shape"], obs_dtype),
               "terminated": jnp.float32(0)}
    return DQNState(params, params, tx.init(params), replay.init_buffer(example, c.buffer_size),
                    env_state, obs, rng, jnp.int32(0))

  def loss_fn(params, target, b):
    q = jnp.sum(qvalues(params, b["obs"]) * jax.nn.one_hot(b["action"], info["action_dim"]), -1)
    q_next_target = qvalues(target, b["next_obs"])
    if c.double_dqn:
      a_next = jnp.argmax(qvalues(params, b["next_obs"]), -1)
      q_next = jnp.sum(q_next_target * jax.nn.one_hot(a_next, info["action_dim"]), -1)
    else:
      q_next = jnp.max(q_next_target, -1)
    y = jax.lax.stop_gradient(b["reward"] + c.gamma * (1.0 - b["terminated"]) * q_next)
    return jnp.mean(optax.huber_loss(q, y)), jnp.mean(q)

  def update(s: DQNState):
    rng, k_act, k_env, k_learn = jax.random.split(s.rng, 4)
    eps = linear_schedule(c.eps_start, c.eps_end, c.exploration_fraction * num_updates, s.step)
    action = epsilon_greedy(qvalues(s.params, s.obs), k_act, eps)
    next_obs, env_state, reward, terminated, truncated, info_ = runner.step(
        jax.random.split(k_env, c.num_envs), s.env_state, action)
    buf = replay.add_batch(s.buffer, {
        "obs": s.obs, "action": action.astype(jnp.int32), "reward": reward.astype(jnp.float32),
        "next_obs": info_["final_obs"], "terminated": terminated.astype(jnp.float32)})
    learning = buf.size >= c.learning_starts

    def grad_step(carry, key):
      params, opt_state = carry
      batch = replay.sample(buf, key, c.batch_size)
      (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, s.target, batch)
      updates, new_opt = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      params = jnp.where(learning, new_params, params)
      opt_state = jax.tree.map(lambda a, b: jnp.where(learning, a, b), new_opt, opt_state)
      return (params, opt_state), (loss, q_mean)

    (params, opt_state), (loss, q_mean) = jax.lax.scan(
        grad_step, (s.params, s.opt_state), jax.random.split(k_learn, c.gradient_steps))
    step = s.step + 1
    target = jnp.where(step % c.target_update_every == 0, params, s.target)
    done = terminated | truncated
    metrics = {"loss/td": jnp.mean(loss), "q/mean": jnp.mean(q_mean), "q/epsilon": eps,
               "sum/episode_return": jnp.sum(info_["episode_return"]),
               "sum/episode_length": jnp.sum(info_["episode_length"]).astype(jnp.float32),
               "sum/episodes": jnp.sum(done).astype(jnp.float32)}
    return DQNState(params, target, opt_state, buf, env_state, next_obs, rng, step), metrics

  def act(s: DQNState, obs, key, greedy_eval: bool):
    q = qvalues(s.params, obs)
    return greedy(q, key) if greedy_eval else epsilon_greedy(q, key, c.eps_end)

  return base.Algorithm(init, update, act, c.num_envs,
                        bind=base.bind_params(unravel))
