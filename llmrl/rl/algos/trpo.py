"""TRPO (Schulman et al. 2015): natural-gradient policy steps inside a KL trust region.

One update = a rollout, GAE(lambda) advantages, then
  1. g = grad of the surrogate E[pi(a|s) / pi_old(a|s) A] at the old policy;
  2. x ~= F^-1 g by conjugate gradient, where F v (Fisher-vector product) is the
     Hessian-vector product of the mean KL(pi_old || pi) (plus damping);
  3. the full step x sqrt(2 delta / x^T F x) is shrunk geometrically (backtracking
     line search) until the exact mean KL is <= delta (`max_kl`) and the
     surrogate improves (by at least `accept_ratio` of its linear prediction);
     if no candidate qualifies the policy is left unchanged;
  4. the value function is fitted by Adam on the GAE returns.
Parameters are one flat vector, so steps 1-3 are plain vector algebra.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from llmrl.config import check_positive
from llmrl.rl import normalize as norm_lib
from llmrl.rl import ppo_core, rollout
from llmrl.rl.algos import base
from llmrl.rl.networks import ActorCritic


def default_config() -> ml_collections.ConfigDict:
  """`config.algo` for TRPO."""
  c = ml_collections.ConfigDict()
  c.name = "trpo"
  c.num_envs = 8
  c.num_steps = 256
  c.gamma = 0.99
  c.gae_lambda = 0.97
  c.max_kl = 0.01               # the trust region delta on mean KL(old || new)
  c.cg_iters = 10
  c.cg_damping = 0.1
  c.backtrack_iters = 10
  c.backtrack_coef = 0.8
  c.accept_ratio = 0.1          # required fraction of the predicted improvement
  c.normalize_advantages = True
  c.normalize_obs = False
  c.learning_rate = 1e-3        # value function (Adam)
  c.anneal_lr = False
  c.max_grad_norm = 0.0
  c.adam_eps = 1e-5
  c.vf_epochs = 5
  c.minibatches = 8             # value-function minibatches; divides num_envs * num_steps
  c.hidden = (64, 64)
  c.activation = "tanh"
  return c


def conjugate_gradient(matvec: Callable, b: jax.Array, iters: int,
                       tol: float = 1e-10) -> jax.Array:
  """Approximately solves A x = b for symmetric positive-definite A (fixed iterations)."""

  def body(_, c):
    x, r, p, rr = c
    live = rr > tol
    ap = matvec(p)
    alpha = jnp.where(live, rr / jnp.maximum(jnp.vdot(p, ap), 1e-30), 0.0)
    x, r = x + alpha * p, r - alpha * ap
    rr_new = jnp.vdot(r, r)
    beta = jnp.where(live, rr_new / jnp.maximum(rr, 1e-30), 0.0)
    return x, r, jnp.where(live, r + beta * p, p), jnp.where(live, rr_new, rr)

  x0 = jnp.zeros_like(b)
  return jax.lax.fori_loop(0, iters, body, (x0, b, b, jnp.vdot(b, b)))[0]


def trpo_step(policy: Callable, params: jax.Array, obs, actions, advantages, *,
              max_kl: float, cg_iters: int = 10, cg_damping: float = 0.1,
              backtrack_iters: int = 10, backtrack_coef: float = 0.8,
              accept_ratio: float = 0.1, mask=None) -> tuple[jax.Array, dict]:
  """One trust-region policy step on a batch -> (new flat params, stats).

  policy(params, obs) -> distribution over `actions`; `params` is a flat vector.
  The returned params satisfy mean KL(old || new) <= max_kl on the batch.
  """
  old = jax.lax.stop_gradient(policy(params, obs))
  old_logp = old.log_prob(actions)

  def surrogate(p):
    return ppo_core.masked_mean(jnp.exp(policy(p, obs).log_prob(actions) - old_logp)
                                * advantages, mask)

  def mean_kl(p):
    return ppo_core.masked_mean(old.kl(policy(p, obs)), mask)

  g = jax.grad(surrogate)(params)
  kl_grad = jax.grad(mean_kl)

  def fvp(v):
    return jax.grad(lambda p: jnp.vdot(kl_grad(p), v))(params) + cg_damping * v

  x = conjugate_gradient(fvp, g, cg_iters)
  xfx = jnp.maximum(jnp.vdot(x, fvp(x)), 1e-12)
  full_step = x * jnp.sqrt(2.0 * max_kl / xfx)
  expected = jnp.vdot(g, full_step)
  base_value = surrogate(params)
  fracs = backtrack_coef ** jnp.arange(backtrack_iters, dtype=jnp.float32)

  def candidate(frac):
    p = params + frac * full_step
    return surrogate(p) - base_value, mean_kl(p)

  improve, kls = jax.vmap(candidate)(fracs)
  ok = (kls <= max_kl) & (improve > 0) & (improve >= accept_ratio * expected * fracs)
  accepted = jnp.any(ok)
  i = jnp.argmax(ok)
  frac = jnp.where(accepted, fracs[i], 0.0)
  new = params + frac * full_step
  stats = {"trpo/kl": jnp.where(accepted, kls[i], 0.0),
           "trpo/improvement": jnp.where(accepted, improve[i], 0.0),
           "trpo/expected_improvement": expected, "trpo/step_frac": frac,
           "trpo/accepted": accepted.astype(jnp.float32)}
  return new, stats


@struct.dataclass
class TRPOState:
  params: jax.Array   # flat vector: policy and value parameters
  opt_state: Any      # value-function Adam
  env_state: Any
  obs: jax.Array
  obs_stats: norm_lib.RunningStats
  rng: jax.Array


def validate(c: ml_collections.ConfigDict, total_steps: int) -> None:
  base.check_common(c, total_steps)
  base.check_minibatches(c)
  for k in ("max_kl", "cg_iters", "backtrack_iters", "vf_epochs"):
    check_positive(f"algo.{k}", c[k])


def make(c: ml_collections.ConfigDict, env, env_params, total_steps: int) -> base.Algorithm:
  validate(c, total_steps)
  info = base.env_info(env, env_params)
  net = ActorCritic(info["action_dim"], info["discrete"], tuple(c.hidden), c.activation,
                    info["num_obs_states"])
  runner = rollout.EnvRunner.create(env, env_params, c.num_envs)
  batch_size = c.num_envs * c.num_steps
  mb_size = batch_size // c.minibatches
  num_updates = total_steps // batch_size
  tx = base.adam(c, num_updates * c.vf_epochs * c.minibatches)
  sample_obs = jnp.zeros((1, *info["obs_shape"]),
                         jnp.int32 if info["num_obs_states"] else jnp.float32)
  init_params, unravel = base.flat_params(net, sample_obs)
  tree = base.as_tree(unravel)  # p: flat vector, or unravelled outside a scan
  policy = lambda p, o: net.apply({"params": tree(p)}, o, method=ActorCritic.policy)
  value_fn = lambda p, o: net.apply({"params": unravel(p)}, o, method=ActorCritic.value)
  prep = lambda s, o: norm_lib.normalize(s, o) if c.normalize_obs else o

  def init(key):
    k_net, k_env, rng = jax.random.split(key, 3)
    obs, env_state = runner.reset(k_env)
    params = init_params(k_net)
    return TRPOState(params, tx.init(params), env_state, obs,
                     norm_lib.init_stats(info["obs_shape"]), rng)

  def value_step(carry, mb):
    params, opt_state = carry
    obs, ret = mb
    loss, grads = jax.value_and_grad(
        lambda p: ppo_core.value_loss(value_fn(p, obs), None, ret))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def update(s: TRPOState):
    rng, k_roll, k_perm = jax.random.split(s.rng, 3)
    env_state, obs, stats_obs, ro, episodes = rollout.collect(
        runner, policy, unravel(s.params), s.env_state, s.obs, s.obs_stats, k_roll,
        c.num_steps, c.normalize_obs, info["clip_actions"])
    values, rewards = rollout.values_and_rewards(ro, lambda o: value_fn(s.params, o), c.gamma)
    last_value = value_fn(s.params, prep(stats_obs, obs))
    adv, ret = ppo_core.gae(rewards.T, values.T, ro.done.T, last_value,  # [N, T]
                            gamma=c.gamma, lam=c.gae_lambda)
    flat = lambda x: jnp.swapaxes(x, 0, 1).reshape(batch_size, *x.shape[2:])  # [N*T, ...]
    obs_b, act_b = flat(ro.obs), flat(ro.action)
    adv_b, ret_b = adv.reshape(batch_size), ret.reshape(batch_size)
    if c.normalize_advantages:
      adv_b = ppo_core.whiten(adv_b)
    params, metrics = trpo_step(
        policy, s.params, obs_b, act_b, adv_b, max_kl=c.max_kl, cg_iters=c.cg_iters,
        cg_damping=c.cg_damping, backtrack_iters=c.backtrack_iters,
        backtrack_coef=c.backtrack_coef, accept_ratio=c.accept_ratio)

    def epoch(carry, key):
      perm = base.permutation(key, batch_size)
      mbs = jax.tree.map(lambda x: x[perm].reshape(c.minibatches, mb_size, *x.shape[1:]),
                         (obs_b, ret_b))
      return jax.lax.scan(value_step, carry, mbs)

    (params, opt_state), v_losses = jax.lax.scan(
        epoch, (params, s.opt_state), jax.random.split(k_perm, c.vf_epochs))
    metrics["loss/value"] = jnp.mean(v_losses)
    metrics["policy/entropy"] = jnp.mean(policy(params, obs_b).entropy())
    metrics["value/explained_variance"] = ppo_core.explained_variance(values.T, ret)
    metrics.update(episodes)
    return TRPOState(params, opt_state, env_state, obs, stats_obs, rng), metrics

  def act_policy(s: TRPOState, obs):
    return policy(s.params, prep(s.obs_stats, obs))

  def act(s: TRPOState, obs, key, greedy: bool, noise=None):
    dist = act_policy(s, obs)
    a = dist.mode() if greedy else dist.sample(key) if noise is None else dist.sample_from(noise)
    return a if info["clip_actions"] is None else jnp.clip(a, *info["clip_actions"])

  return base.Algorithm(init, update, act, batch_size, act_policy,
                        bind=base.bind_params(unravel))
