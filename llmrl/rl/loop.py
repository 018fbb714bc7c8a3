"""The whole training run as jittable functions built from `lax.scan` (PureJaxRL style).

    train = make_train(config)              # train(key) -> (final_state, metrics)
    state, metrics = jax.jit(jax.vmap(train))(jax.random.split(key, seeds))

A run is `num_updates` algorithm updates in chunks of `config.train.log_every`
updates; after each chunk the current policy is evaluated on
`config.train.eval_episodes` episodes. The host-side runner (llmrl.rl.runner)
jits one chunk at a time to print progress without host syncs inside a chunk;
`make_train` scans over the same chunks, so both give identical numbers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from llmrl.config import check_positive
from llmrl.rl import envs, parallel, rollout
from llmrl.rl.algos import base, get


class Plan(NamedTuple):
  """A run cut into chunks: `num_chunks` of `chunk` updates, then `remainder` more."""
  algo: base.Algorithm
  env: Any
  env_params: Any
  num_updates: int
  chunk: int
  num_chunks: int
  remainder: int
  run_chunk: Callable[[Any, int], tuple[Any, dict]]   # (state, n) -> (state, metrics)
  evaluate: Callable[[Any, jax.Array, int], tuple]    # (state, key, episodes) -> (returns, lengths)


def make_env(config: ml_collections.ConfigDict):
  env = envs.make(config.env.name)
  return env, env.default_params


def plan(config: ml_collections.ConfigDict) -> Plan:
  """Validates the config and builds the algorithm and its chunked schedule."""
  t = config.train
  check_positive("train.total_steps", t.total_steps)
  check_positive("train.log_every", t.log_every)
  check_positive("train.eval_episodes", t.eval_episodes, allow_zero=True)
  env, env_params = make_env(config)
  algo = get(config.algo.name).make(config.algo, env, env_params, t.total_steps)
  num_updates = max(t.total_steps // algo.steps_per_update, 1)
  chunk = min(t.log_every, num_updates)
  greedy = bool(t.eval_greedy)
  max_eval_steps = int(t.eval_max_steps)

  def evaluate_part(state, key, episodes, part=(0, 1)):
    if algo.bind is not None:
      state = algo.bind(state)  # once, outside the evaluation loop
    if algo.policy is None or greedy:
      act = lambda obs, k: algo.act(state, obs, k, greedy)
      return rollout.evaluate(env, env_params, act, key, episodes, max_eval_steps, part=part)
    act = lambda obs, noise: algo.act(state, obs, None, False, noise=noise)
    noise = lambda obs, k, n: jax.eval_shape(algo.policy, state, obs).noise(k, (n,))
    return rollout.evaluate(env, env_params, act, key, episodes, max_eval_steps, noise=noise,
                            part=part)

  def evaluate(state, key, episodes):
    if algo.devices == 1 or episodes < 2:
      return evaluate_part(state, key, episodes)
    # Half of the episodes on each device, with the numbers of one evaluation.
    halves = [lambda s, k, i=i: evaluate_part(s, k, episodes, (i, 2)) for i in range(2)]
    (ret_a, len_a), (ret_b, len_b) = parallel.on_two_devices(*halves)(state, key)
    return jnp.concatenate([ret_a, ret_b]), jnp.concatenate([len_a, len_b])

  def run_chunk(state, n):
    state, metrics = jax.lax.scan(lambda s, _: algo.update(s), state, None, length=n)
    out = {k: jnp.sum(v) if k.startswith("sum/") else jnp.mean(v) for k, v in metrics.items()}
    if t.eval_episodes:
      # A key derived from (not drawn from) the training stream: evaluating never
      # changes the training numbers, and every chunk and seed evaluates afresh.
      key = jax.random.fold_in(state.rng, 0x5EED)
      ret, length = evaluate(state, key, t.eval_episodes)
      out["eval/return"], out["eval/length"] = jnp.mean(ret), jnp.mean(length)
    return state, out

  return Plan(algo, env, env_params, num_updates, chunk, num_updates // chunk,
              num_updates % chunk, run_chunk, evaluate)


def make_train(config: ml_collections.ConfigDict) -> Callable[[jax.Array], tuple[Any, dict]]:
  """train(key) -> (final_state, metrics with a leading [chunks] axis)."""
  p = plan(config)

  def train(key):
    state = p.algo.init(key)

    state, metrics = jax.lax.scan(lambda s, _: p.run_chunk(s, p.chunk), state, None,
                                  length=p.num_chunks)
    if p.remainder:
      state, last = p.run_chunk(state, p.remainder)
      metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), metrics, last)
    return state, metrics

  return train
