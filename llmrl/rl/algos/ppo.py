"""PPO (Schulman et al. 2017): clipped objective, or the adaptive-KL-penalty variant.

One update = a rollout of num_envs x num_steps steps, GAE(lambda), then
`epochs` passes over the batch in `minibatches` shuffled minibatches. The loss
terms all come from llmrl.rl.ppo_core (the same functions RLHF uses):
clipped surrogate or KL-penalised surrogate, clipped value loss, entropy bonus,
advantage whitening. With objective="kl" the coefficient beta is doubled when
the update's mean KL(old || new) exceeds 1.5 kl_target and halved when it is
below kl_target / 1.5.

`actor_critic_update` chooses how the two networks learn: one joint loss and
gradient clip ("joint"), each its own clip and Adam step ("separate"), or
"separate" with the actor's and the critic's epochs on two devices at once
("parallel", llmrl.rl.parallel: on a CPU, two cores; the same numbers).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from llmrl.config import ConfigError, check_enum, check_positive
from llmrl.rl import normalize as norm_lib
from llmrl.rl import parallel, ppo_core, rollout
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
  # How the actor and critic are stepped in the minibatch epochs:
  #   "joint"     one loss, one gradient-norm clip over both networks (CleanRL, SB3);
  #   "separate"  each network its own loss term, clip and Adam step (rejax);
  #   "parallel"  "separate", with the actor's and critic's epochs on two devices
  #               at once: on CPU, two cores (set XLA_FLAGS=
  #               --xla_force_host_platform_device_count=2 before jax starts).
  c.actor_critic_update = "joint"
  return c


@struct.dataclass
class PPOState:
  params: Any                  # flat vector (base.flat_params); with separate actor and
                               # critic updates, (actor, critic) vectors (flat_param_groups)
  opt_state: Any               # optax state of params (a pair of them when separate)
  env_state: Any
  obs: jax.Array
  obs_stats: norm_lib.RunningStats
  kl_beta: jax.Array
  rng: jax.Array


# Batch fields each network's loss reads (old_dist: the adaptive-KL objective's exact KL).
ACTOR_FIELDS = ("obs", "action", "logp", "adv", "old_dist")
CRITIC_FIELDS = ("obs", "value", "ret")


def validate(c: ml_collections.ConfigDict, total_steps: int) -> None:
  base.check_common(c, total_steps)
  base.check_minibatches(c)
  check_enum("algo.objective", c.objective, ["clip", "kl"])
  check_enum("algo.kl_estimator", c.kl_estimator, ["exact", "k1", "k2", "k3"])
  check_positive("algo.epochs", c.epochs)
  check_positive("algo.kl_target", c.kl_target)
  check_enum("algo.actor_critic_update", c.actor_critic_update,
             ["joint", "separate", "parallel"])
  if c.actor_critic_update == "parallel" and len(jax.local_devices()) < 2:
    raise ConfigError(
        "config.algo.actor_critic_update='parallel' runs the actor's and the critic's "
        f"updates on two devices, but jax sees {len(jax.local_devices())}. On CPU, start "
        "Python with XLA_FLAGS=--xla_force_host_platform_device_count=2 (set before jax "
        "is imported), or use 'separate' (the same updates on one device).")


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
  joint = c.actor_critic_update == "joint"
  if joint:
    init_params, unravel = base.flat_params(net, sample_obs)
  else:  # (actor, critic) flat vectors
    init_params, unravel = base.flat_param_groups(net, sample_obs,
                                                  (("actor", "log_std"), ("critic",)))
  tree = base.as_tree(unravel)  # p: flat form, or unravelled outside a scan
  apply = lambda p, o: net.apply({"params": tree(p)}, o)
  value_fn = lambda p, o: net.apply({"params": tree(p)}, o, method=ActorCritic.value)
  policy = lambda p, o: net.apply({"params": tree(p)}, o, method=ActorCritic.policy)
  prep = lambda s, o: norm_lib.normalize(s, o) if c.normalize_obs else o
  vf_clip = c.vf_clip_eps if c.vf_clip_eps > 0 else None

  def init(key):
    k_net, k_env, rng = jax.random.split(key, 3)
    obs, env_state = runner.reset(k_env)
    params = init_params(k_net)
    opt_state = tx.init(params) if joint else tuple(tx.init(p) for p in params)
    return PPOState(params, opt_state, env_state, obs,
                    norm_lib.init_stats(info["obs_shape"]), jnp.float32(c.kl_beta_init), rng)

  def actor_terms(tree_params, mb, beta):
    """(policy loss, entropy, stats) of the actor on a minibatch."""
    dist = policy(tree_params, mb["obs"])
    logp = dist.log_prob(mb["action"])
    adv = ppo_core.whiten(mb["adv"]) if c.normalize_advantages else mb["adv"]
    if c.objective == "clip":
      pg, stats = ppo_core.clipped_surrogate_loss(logp, mb["logp"], adv, clip_eps=c.clip_eps)
    else:
      kl = (mb["old_dist"].kl(dist) if c.kl_estimator == "exact"
            else ppo_core.kl_estimate(mb["logp"], logp, c.kl_estimator))
      pg, stats = ppo_core.kl_penalty_loss(logp, mb["logp"], adv, kl, beta=beta)
    entropy = ppo_core.entropy_bonus(dist.entropy())
    stats = {**{f"ppo/{k}": v for k, v in stats.items()}, "loss/policy": pg,
             "policy/entropy": entropy,
             "ratio_dev": jnp.max(jnp.abs(jnp.exp(logp - mb["logp"]) - 1.0))}
    return pg, entropy, stats

  def critic_term(tree_params, mb):
    """Value loss of the critic on a minibatch."""
    value = value_fn(tree_params, mb["obs"])
    return ppo_core.value_loss(value, mb["value"], mb["ret"], clip_eps=vf_clip)

  def joint_loss(params, mb, beta):
    t = unravel(params)
    pg, entropy, stats = actor_terms(t, mb, beta)
    v_loss = critic_term(t, mb)
    return pg + c.vf_coef * v_loss - c.ent_coef * entropy, {**stats, "loss/value": v_loss}

  def actor_loss(params, mb, beta):
    pg, entropy, stats = actor_terms(unravel((params, None)), mb, beta)
    return pg - c.ent_coef * entropy, stats

  def critic_loss(params, mb, beta):
    v_loss = critic_term(unravel((None, params)), mb)
    return c.vf_coef * v_loss, {"loss/value": v_loss}

  def epochs(loss_fn, params, opt_state, data, perms, beta):
    """`epochs` passes of minibatch Adam steps on `loss_fn(params, mb, beta)`.

    data: dict of [batch, ...] arrays; perms [epochs, batch]. Returns
    ((params, opt_state), stats with leaves [epochs, minibatches]).
    """
    def step(carry, mb):
      p, o = carry
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, mb, beta)
      updates, o = tx.update(grads, o, p)
      stats["grad_sq"] = optax.tree.norm(grads, squared=True)
      stats["loss"] = loss
      return (optax.apply_updates(p, updates), o), stats

    def epoch(carry, perm):
      mbs = jax.tree.map(  # [minibatches, mb_size, ...]
          lambda x: x[perm].reshape(c.minibatches, mb_size, *x.shape[1:]), data)
      return jax.lax.scan(step, carry, mbs)

    return jax.lax.scan(epoch, (params, opt_state), perms)

  pick = lambda data, names: {k: data[k] for k in names if k in data}

  def actor_epochs(params, opt_state, data, perms, beta):
    return epochs(actor_loss, params[0], opt_state[0], pick(data, ACTOR_FIELDS), perms, beta)

  def critic_epochs(params, opt_state, data, perms, beta):
    return epochs(critic_loss, params[1], opt_state[1], pick(data, CRITIC_FIELDS), perms, beta)

  if c.actor_critic_update == "parallel":
    both_epochs = parallel.on_two_devices(actor_epochs, critic_epochs)
  else:
    both_epochs = lambda *a: (actor_epochs(*a), critic_epochs(*a))

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
    data = {"obs": obs_b, "action": flat(ro.action), "logp": flat(ro.logp),
            "value": flat(values), "adv": adv.reshape(batch_size),
            "ret": ret.reshape(batch_size)}
    old_dist = None
    if c.objective == "kl" and c.kl_estimator == "exact":
      old_dist = jax.lax.stop_gradient(apply(s.params, obs_b)[0])
      data["old_dist"] = old_dist
    perms = jax.vmap(lambda k: base.permutation(k, batch_size))(
        jax.random.split(k_perm, c.epochs))  # [epochs, batch]

    if joint:
      (params, opt_state), mstats = epochs(joint_loss, s.params, s.opt_state, data, perms,
                                           s.kl_beta)
      grad_norm = jnp.sqrt(mstats.pop("grad_sq"))
    else:
      ((pa, oa), sa), ((pc, oc), sc) = both_epochs(s.params, s.opt_state, data, perms,
                                                   s.kl_beta)
      params, opt_state = (pa, pc), (oa, oc)
      # The joint figures from the two networks' parts.
      grad_norm = jnp.sqrt(sa.pop("grad_sq") + sc.pop("grad_sq"))
      sa["loss"] = sa["loss"] + sc.pop("loss")
      mstats = {**sa, **sc}
    mstats["learning/grad_norm"] = grad_norm
    mstats["loss/total"] = mstats.pop("loss")
    # mstats leaves: [epochs, minibatches]
    metrics = {k: jnp.mean(v) for k, v in mstats.items() if k != "ratio_dev"}
    metrics["ppo/first_minibatch_ratio_dev"] = mstats["ratio_dev"][0, 0]
    metrics["ppo/first_minibatch_kl"] = mstats["ppo/approx_kl"][0, 0]
    beta = s.kl_beta
    if c.objective == "kl":
      new_dist = apply(params, obs_b)[0]
      kl_now = jnp.mean(old_dist.kl(new_dist) if old_dist is not None else
                        ppo_core.kl_estimate(data["logp"], new_dist.log_prob(data["action"]),
                                             "k3"))
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
                        bind=base.bind_params(unravel),
                        devices=2 if c.actor_critic_update == "parallel" else 1)
