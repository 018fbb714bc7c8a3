"""What every RL algorithm provides to the training loop, and shared helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from llmrl.config import ConfigError, check_divides, check_enum, check_positive
from llmrl.rl.envs import flat_obs_dim, is_discrete
from llmrl.rl.networks import ACTIVATIONS


class Algorithm(NamedTuple):
  """A jittable algorithm: init(key) -> state; update(state) -> (state, metrics).

  `update` does one round of acting and learning (`steps_per_update`
  environment steps) and returns a flat dict of scalar metrics; keys starting
  with "sum/" are summed over a logging chunk, the rest averaged.
  `act(state, obs [E, ...], key, greedy) -> actions [E, ...]` is the policy
  used for evaluation. Policy-gradient algorithms also give
  `policy(state, obs) -> distribution`, and their `act` takes `noise=` (from
  the distribution's `noise`) in place of the key: evaluation then draws its
  sampling noise for many steps at once (see rollout.evaluate).
  `bind(state)`, when given, returns a state for a loop of `act`/`policy` calls
  with per-call work done once (the flat parameters unravelled outside the loop:
  on CPU, slicing them at every step costs ~4% of a CartPole PPO run).
  `devices` is 2 when `update` runs work on two devices side by side
  (llmrl.rl.parallel); evaluation then runs half of its episodes on each.
  """
  init: Callable[[jax.Array], Any]
  update: Callable[[Any], tuple[Any, dict]]
  act: Callable[..., jax.Array]
  steps_per_update: int
  policy: Callable[[Any, jax.Array], Any] | None = None
  bind: Callable[[Any], Any] | None = None
  devices: int = 1


def env_info(env, env_params) -> dict:
  """Static facts about the spaces the networks need."""
  a_space, o_space = env.action_space(env_params), env.observation_space(env_params)
  discrete = is_discrete(a_space)
  info = {"discrete": discrete,
          "action_dim": int(a_space.n) if discrete else int(flat_obs_dim(a_space)),
          "num_obs_states": int(o_space.n) if is_discrete(o_space) else 0,
          "obs_shape": tuple(o_space.shape),
          "clip_actions": None}
  if not discrete:
    info["clip_actions"] = (jnp.asarray(a_space.low), jnp.asarray(a_space.high))
  return info


def require_discrete_actions(algo: str, env, env_params) -> None:
  if not is_discrete(env.action_space(env_params)):
    raise ConfigError(
        f"config.algo.name={algo!r} needs discrete actions, but {env.name} has "
        "continuous (Box) actions; use ppo, ppo_kl, trpo or reinforce for it.")


def check_common(c: ml_collections.ConfigDict, total_steps: int) -> None:
  """Checks shared by the on-policy algorithms."""
  for k in ("num_envs", "num_steps", "learning_rate"):
    check_positive(f"algo.{k}", c[k])
  check_enum("algo.activation", c.activation, list(ACTIVATIONS))
  if total_steps < c.num_envs * c.num_steps:
    raise ConfigError(
        f"config.train.total_steps={total_steps} is less than one update "
        f"(algo.num_envs * algo.num_steps = {c.num_envs * c.num_steps}).")


def check_minibatches(c: ml_collections.ConfigDict) -> None:
  batch = c.num_envs * c.num_steps
  check_divides("config.algo.minibatches", c.minibatches,
                "the batch config.algo.num_envs * num_steps", batch,
                fix="choose minibatches that divide num_envs * num_steps")


def adam(c: ml_collections.ConfigDict, total_opt_steps: int) -> optax.GradientTransformation:
  """Adam with global-norm clipping and an optional linear decay to 0."""
  lr = c.learning_rate
  if c.get("anneal_lr", False):
    lr = optax.linear_schedule(c.learning_rate, 0.0, max(total_opt_steps, 1))
  parts = []
  if c.get("max_grad_norm", 0) and c.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(c.max_grad_norm))
  parts.append(optax.adam(lr, eps=c.get("adam_eps", 1e-5)))
  return optax.chain(*parts)


def current_lr(c: ml_collections.ConfigDict, opt_step: jax.Array, total_opt_steps: int):
  if c.get("anneal_lr", False):
    return c.learning_rate * (1.0 - jnp.minimum(opt_step / max(total_opt_steps, 1), 1.0))
  return jnp.float32(c.learning_rate)


def permutation(key: jax.Array, n: int) -> jax.Array:
  """A uniformly random permutation of range(n) [n] int32; ~5x cheaper than
  jax.random.permutation on CPU.

  jax.random.permutation sorts (key, value) pairs, and XLA's CPU sort calls
  the compiled comparator per comparison (~110 us for n=500, about 10% of a
  PPO run on CartPole). Here each index is packed into the low bits of its
  random key, so one plain uint32 sort (XLA's fast path) orders them. Equal
  random high bits would fall back to index order, so two rounds are
  composed: a pair keeps a non-random order only if it ties in both
  (probability ~n^2 / 2^(2 (32 - bits)), 2e-9 for n=500).
  """
  b = max(int(n - 1).bit_length(), 1)
  if b > 16:
    return jax.random.permutation(key, n)
  idx = jnp.arange(n, dtype=jnp.uint32)
  low = jnp.uint32((1 << b) - 1)
  bits = jax.random.bits(key, (2, n), jnp.uint32)
  perm = idx
  for r in range(2):
    perm = perm[jax.lax.sort((bits[r] & ~low) | idx) & low]
  return perm.astype(jnp.int32)


def flat_params(net, sample_obs: jax.Array):
  """(init(key) -> flat param vector, unravel(flat) -> params pytree) for a Flax module.

  The algorithms optimise one flat float32 vector: Adam and the global-norm
  clip become a few fused element-wise ops instead of one per parameter leaf,
  which matters for the tiny networks of classic control (about 1.5x faster
  minibatch steps on CPU), and TRPO's conjugate gradient needs vectors anyway.
  """
  from jax.flatten_util import ravel_pytree
  shapes = jax.eval_shape(lambda k: net.init(k, sample_obs)["params"], jax.random.PRNGKey(0))
  _, unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

  def init(key):
    return ravel_pytree(net.init(key, sample_obs)["params"])[0]

  return init, unravel


def flat_param_groups(net, sample_obs: jax.Array, groups: tuple[tuple[str, ...], ...]):
  """`flat_params` with one flat vector per group of top-level parameter names.

  (init(key) -> tuple of flat vectors, unravel(tuple) -> the whole params
  pytree). PPO's separate actor and critic updates use it: groups
  (("actor", "log_std"), ("critic",)); names a network lacks are skipped.
  """
  from jax.flatten_util import ravel_pytree
  shapes = jax.eval_shape(lambda k: net.init(k, sample_obs)["params"], jax.random.PRNGKey(0))
  named = [tuple(n for n in g if n in shapes) for g in groups]
  missing = set(shapes) - {n for g in named for n in g}
  if missing:
    raise ValueError(f"parameters {sorted(missing)} are in no group of {groups}")
  zeros = lambda g: {n: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[n]) for n in g}
  unravels = [ravel_pytree(zeros(g))[1] for g in named]

  def init(key):
    params = net.init(key, sample_obs)["params"]
    return tuple(ravel_pytree({n: params[n] for n in g})[0] for g in named)

  def unravel(flats):
    # None for a group skips it (a loss that reads one network only)
    return {k: v for u, f in zip(unravels, flats) if f is not None
            for k, v in u(f).items()}

  return init, unravel


def as_tree(unravel: Callable) -> Callable:
  """p -> params pytree, for p in flat form (a vector, or a tuple of them from
  `flat_param_groups`) or an already unravelled pytree.

  Networks applied inside a scan take the pytree unravelled before the scan, so
  the slices of the flat vector are not redone at every step.
  """
  return lambda p: p if isinstance(p, Mapping) else unravel(p)


def bind_params(unravel: Callable) -> Callable:
  """`Algorithm.bind` for a state whose `params` is the flat vector: unravels it."""
  return lambda s: s.replace(params=unravel(s.params))

