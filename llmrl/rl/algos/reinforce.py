"""REINFORCE (Williams 1992) with a learned state-value baseline.

One update = a rollout, Monte Carlo discounted returns G_t (to the episode's
end; where the rollout or a time limit cuts an episode, the remaining tail is
bootstrapped with the baseline V), then one gradient step on
  -E[log pi(a_t|s_t) (G_t - V(s_t))] + vf_coef * 0.5 E[(V(s_t) - G_t)^2] - ent_coef * H.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from llmrl.rl import normalize as norm_lib
from llmrl.rl import ppo_core, rollout
from llmrl.rl.algos import base
from llmrl.rl.networks import ActorCritic


def default_config() -> ml_collections.ConfigDict:
  """`config.algo` for REINFORCE with a baseline."""
  c = ml_collections.ConfigDict()
  c.name = "reinforce"
  c.num_envs = 8
  c.num_steps = 128
  c.gamma = 0.99
  c.learning_rate = 1e-3
  c.anneal_lr = False
  c.max_grad_norm = 0.5
  c.adam_eps = 1e-5
  c.vf_coef = 0.5
  c.ent_coef = 0.0
  c.normalize_advantages = True
  c.normalize_obs = False
  c.hidden = (64, 64)
  c.activation = "tanh"
  return c


@struct.dataclass
class ReinforceState:
  params: jax.Array
  opt_state: Any
  env_state: Any
  obs: jax.Array
  obs_stats: norm_lib.RunningStats
  rng: jax.Array


def make(c: ml_collections.ConfigDict, env, env_params, total_steps: int) -> base.Algorithm:
  base.check_common(c, total_steps)
  info = base.env_info(env, env_params)
  net = ActorCritic(info["action_dim"], info["discrete"], tuple(c.hidden), c.activation,
                    info["num_obs_states"])
  runner = rollout.EnvRunner.create(env, env_params, c.num_envs)
  batch_size = c.num_envs * c.num_steps
  tx = base.adam(c, total_steps // batch_size)
  sample_obs = jnp.zeros((1, *info["obs_shape"]),
                         jnp.int32 if info["num_obs_states"] else jnp.float32)
  init_params, unravel = base.flat_params(net, sample_obs)
  apply = lambda p, o: net.apply({"params": unravel(p)}, o)
  tree = base.as_tree(unravel)  # p: flat vector, or unravelled outside a scan
  policy = lambda p, o: net.apply({"params": tree(p)}, o, method=ActorCritic.policy)
  value_fn = lambda p, o: net.apply({"params": unravel(p)}, o, method=ActorCritic.value)
  prep = lambda s, o: norm_lib.normalize(s, o) if c.normalize_obs else o

  def init(key):
    k_net, k_env, rng = jax.random.split(key, 3)
    obs, env_state = runner.reset(k_env)
    params = init_params(k_net)
    return ReinforceState(params, tx.init(params), env_state, obs,
                          norm_lib.init_stats(info["obs_shape"]), rng)

  def loss_fn(params, obs, actions, returns):
    dist, value = apply(params, obs)
    adv = jax.lax.stop_gradient(returns - value)
    if c.normalize_advantages:
      adv = ppo_core.whiten(adv)
    pg = -jnp.mean(dist.log_prob(actions) * adv)
    v_loss = ppo_core.value_loss(value, None, returns)
    entropy = jnp.mean(dist.entropy())
    loss = pg + c.vf_coef * v_loss - c.ent_coef * entropy
    return loss, {"loss/policy": pg, "loss/value": v_loss, "policy/entropy": entropy,
                  "value/explained_variance": ppo_core.explained_variance(value, returns)}

  def update(s: ReinforceState):
    rng, k_roll = jax.random.split(s.rng)
    env_state, obs, stats_obs, ro, episodes = rollout.collect(
        runner, policy, unravel(s.params), s.env_state, s.obs, s.obs_stats, k_roll,
        c.num_steps, c.normalize_obs, info["clip_actions"])
    _, rewards = rollout.values_and_rewards(ro, lambda o: value_fn(s.params, o), c.gamma)
    last_value = value_fn(s.params, prep(stats_obs, obs))
    returns = ppo_core.discounted_returns(rewards.T, ro.done.T, last_value,  # [N, T]
                                          gamma=c.gamma)
    flat = lambda x: jnp.swapaxes(x, 0, 1).reshape(batch_size, *x.shape[2:])  # [N*T, ...]
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        s.params, flat(ro.obs), flat(ro.action), returns.reshape(batch_size))
    updates, opt_state = tx.update(grads, s.opt_state, s.params)
    params = optax.apply_updates(s.params, updates)
    metrics["learning/grad_norm"] = optax.tree.norm(grads)
    metrics.update(episodes)
    return ReinforceState(params, opt_state, env_state, obs, stats_obs, rng), metrics

  def act_policy(s: ReinforceState, obs):
    return policy(s.params, prep(s.obs_stats, obs))

  def act(s: ReinforceState, obs, key, greedy: bool, noise=None):
    dist = act_policy(s, obs)
    a = dist.mode() if greedy else dist.sample(key) if noise is None else dist.sample_from(noise)
    return a if info["clip_actions"] is None else jnp.clip(a, *info["clip_actions"])

  return base.Algorithm(init, update, act, batch_size, act_policy,
                        bind=base.bind_params(unravel))
