"""PPO (Schulman et al. 2017): clipped objective, or the adaptive-KL-penalty variant.

One update = a rollout of num_envs x num_steps steps, GAE(lambda), then
`epochs` passes over the batch in `minibatches` shuffled minibatches. The loss
terms all come from llmrl.rl.ppo_core (the same functions RLHF uses):
clipped surrogate or KL-penalised surrogate, clipped value loss, entropy bonus,
advantage whitening. With objective="kl" the coefficient beta is doubled when
the update's mean KL(old || new) exceeds 1.5 kl_target and halved when it is
below kl_target / 1.5.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from llmrl.config import check_enum, check_positive
from llmrl.rl import normalize as norm_lib
from llmrl.rl import ppo_core, rollout
from llmrl.rl.algos import base
from llmrl.rl.networks import ActorCritic


def default_config() -> ml_collections.ConfigDict:
  """`config.algo` for PPO."""
  c = ml_collections.ConfigDict()
  c.name = "ppo"
  c.objective = "clip"          # "clip" (clipped surrogate) or "kl" (adaptive KL penalty)
  c.num_envs = 4
  c.num_steps = 128             # steps per environment per update
  c.epochs = 4
  c.minibatches = 4             # must divide num_envs * num_steps
  c.learning_rate = 2.5e-4
  c.anneal_lr = True
  c.max_grad_norm = 0.5
  c.adam_eps = 1e-5
  c.gamma = 0.99
  c.gae_lambda = 0.95
  c.clip_eps = 0.2
  c.vf_clip_eps = 0.2           # value clipping range (0 = unclipped value loss)
  c.vf_coef = 0.5
  c.ent_coef = 0.01
  c.normalize_advantages = True
  c.normalize_obs = False
  c.kl_target = 0.01            # objective="kl"
  c.kl_beta_init = 1.0
  c.kl_estimator = "exact"      # "exact" (analytic), or samples: "k1", "k2", "k3"
  c.hidden = (64, 64)
  c.activation = "tanh"
  return c


@struct.dataclass
class PPOState:
  params: jax.Array            # flat parameter vector (base.flat_params)
  opt_state: Any
  env_state: Any
  obs: jax.Array
  obs_stats: norm_lib.RunningStats
  kl_beta: jax.Array
  rng: jax.Array


class _Batch(struct.PyTreeNode):
  obs: jax.Array
  action: jax.Array
  logp: jax.Array
  value: jax.Array
  adv: jax.Array
  ret: jax.Array
  old_dist: Any


def validate(c: ml_collections.ConfigDict, total_steps: int) -> None:
  base.check_common(c, total_steps)
  base.check_minibatches(c)
  check_enum("algo.objective", c.objective, ["clip", "kl"])
  check_enum("algo.kl_estimator", c.kl_estimator, ["exact", "k1", "k2", "k3"])
  check_positive("algo.epochs", c.epochs)
  check_positive("algo.kl_target", c.kl_target)


def make(c: ml_collections.ConfigDict, env, env_params, total_steps: int) -> base.Algorithm:
  validate(c, total_steps)
  info = base.env_info(env, env_params)
  net = ActorCritic(info["action_dim"], info["discrete"], tuple(c.hidden), c.activation,
                    info["num_obs_states"])
  runner = rollout.EnvRunner.create(env, env_params, c.num_envs)
  batch_size = c.num_envs * c.num_steps
  mb_size = batch_size // c.minibatches
  num_updates = total_steps // batch_size
  tx = base.adam(c, num_updates * c.epochs * c.minibatches)
  sample_obs = jnp.zeros((1, *info["obs_shape"]),
                         jnp.int32 if info["num_obs_states"] else jnp.float32)
  init_params, unravel = base.flat_params(net, sample_obs)
  apply = lambda p, o: net.apply({"params": unravel(p)}, o)
  value_fn = lambda p, o: net.apply({"params": unravel(p)}, o, method=ActorCritic.value)
  tree = base.as_tree(unravel)  # p: flat vector, or unravelled outside a scan
  policy = lambda p, o: net.apply({"params": tree(p)}, o, method=ActorCritic.policy)
  prep = lambda s, o: norm_lib.normalize(s, o) if c.normalize_obs else o
  vf_clip = c.vf_clip_eps if c.vf_clip_eps > 0 else None

  def init(key):
    k_net, k_env, rng = jax.random.split(key, 3)
    obs, env_state = runner.reset(k_env)
    params = init_params(k_net)  # flat vector
    return PPOState(params, tx.init(params), env_state, obs,
                    norm_lib.init_stats(info["obs_shape"]), jnp.float32(c.kl_beta_init), rng)

  def loss_fn(params, mb: _Batch, beta):
    dist, value = apply(params, mb.obs)
    logp = dist.log_prob(mb.action)
    adv = ppo_core.whiten(mb.adv) if c.normalize_advantages else mb.adv
    if c.objective == "clip":
      pg, stats = ppo_core.clipped_surrogate_loss(logp, mb.logp, adv, clip_eps=c.clip_eps)
    else:
      kl = (mb.old_dist.kl(dist) if c.kl_estimator == "exact"
            else ppo_core.kl_estimate(mb.logp, logp, c.kl_estimator))
      pg, stats = ppo_core.kl_penalty_loss(logp, mb.logp, adv, kl, beta=beta)
    v_loss = ppo_core.value_loss(value, mb.value, mb.ret, clip_eps=vf_clip)
    entropy = ppo_core.entropy_bonus(dist.entropy())
    loss = pg + c.vf_coef * v_loss - c.ent_coef * entropy
    stats = {**{f"ppo/{k}": v for k, v in stats.items()}, "loss/policy": pg,
             "loss/value": v_loss, "policy/entropy": entropy,
             "ratio_dev": jnp.max(jnp.abs(jnp.exp(logp - mb.logp) - 1.0))}
    return loss, stats

  def minibatch_step(carry, mb):
    params, opt_state, beta = carry
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, beta)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    stats["learning/grad_norm"] = optax.tree.norm(grads)
    stats["loss/total"] = loss
    return (params, opt_state, beta), stats

  def update(s: PPOState):
    rng, k_roll, k_perm = jax.random.split(s.rng, 3)
    env_state, obs, stats_obs, ro, episodes = rollout.collect(
        runner, policy, unravel(s.params), s.env_state, s.obs, s.obs_stats, k_roll,
        c.num_steps, c.normalize_obs, info["clip_actions"])
    values, rewards = rollout.values_and_rewards(ro, lambda o: value_fn(s.params, o), c.gamma)
    last_value = value_fn(s.params, prep(stats_obs, obs))
    # ppo_core is batch-major: [N, T].
    adv, ret = ppo_core.gae(rewards.T, values.T, ro.done.T, last_value,
                            gamma=c.gamma, lam=c.gae_lambda)
    flat = lambda x: jnp.swapaxes(x, 0, 1).reshape(batch_size, *x.shape[2:])  # [N*T, ...]
    obs_b = flat(ro.obs)
    old_dist = (jax.lax.stop_gradient(apply(s.params, obs_b)[0])
                if c.objective == "kl" and c.kl_estimator == "exact" else None)
    batch = _Batch(obs_b, flat(ro.action), flat(ro.logp), flat(values),
                   adv.reshape(batch_size), ret.reshape(batch_size), old_dist)

    def epoch(carry, key):
      perm = base.permutation(key, batch_size)
      mbs = jax.tree.map(  # [minibatches, mb_size, ...]
          lambda x: x[perm].reshape(c.minibatches, mb_size, *x.shape[1:]), batch)
      return jax.lax.scan(minibatch_step, carry, mbs)

    (params, opt_state, _), mstats = jax.lax.scan(
        epoch, (s.params, s.opt_state, s.kl_beta), jax.random.split(k_perm, c.epochs))
    # mstats leaves: [epochs, minibatches]
    metrics = {k: jnp.mean(v) for k, v in mstats.items() if k != "ratio_dev"}
    metrics["ppo/first_minibatch_ratio_dev"] = mstats["ratio_dev"][0, 0]
    metrics["ppo/first_minibatch_kl"] = mstats["ppo/approx_kl"][0, 0]
    beta = s.kl_beta
    if c.objective == "kl":
      new_dist = apply(params, obs_b)[0]
      kl_now = jnp.mean(old_dist.kl(new_dist) if old_dist is not None else
                        ppo_core.kl_estimate(batch.logp, new_dist.log_prob(batch.action), "k3"))
      metrics["ppo/update_kl"] = kl_now
      beta = ppo_core.adaptive_kl_update(beta, kl_now, c.kl_target)
    metrics["ppo/kl_beta"] = beta
    metrics["value/explained_variance"] = ppo_core.explained_variance(values.T, ret)
    metrics.update(episodes)
    new = PPOState(params, opt_state, env_state, obs, stats_obs, beta, rng)
    return new, metrics

  def act_policy(s: PPOState, obs):
    return policy(s.params, prep(s.obs_stats, obs))

  def act(s: PPOState, obs, key, greedy: bool, noise=None):
    dist = act_policy(s, obs)
    a = dist.mode() if greedy else dist.sample(key) if noise is None else dist.sample_from(noise)
    return a if info["clip_actions"] is None else jnp.clip(a, *info["clip_actions"])

  return base.Algorithm(init, update, act, batch_size, act_policy,
                        bind=base.bind_params(unravel))
