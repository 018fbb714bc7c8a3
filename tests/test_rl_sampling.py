"""The cheap-randomness helpers behind fast rollouts: pre-drawn action noise, pre-drawn
environment resets, blockwise evaluation noise, and the packed-sort permutation.

References are math (uniform permutations, softmax probabilities, Gaussian moments)
and the per-step key paths they replace (jax.random.categorical, AutoReset drawing
its own reset)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.rl import envs, loop, rollout
from llmrl.rl.algos import base
from llmrl.rl.config import base_config
from llmrl.rl.distributions import Categorical, DiagGaussian


def chi2(counts, expected):
  return float(np.sum((counts - expected) ** 2 / expected))


def test_permutation_is_uniform_and_valid():
  n, draws = 5, 60_000  # 120 permutations, 500 expected each
  perms = np.asarray(jax.jit(jax.vmap(lambda k: base.permutation(k, n)))(
      jax.random.split(jax.random.PRNGKey(0), draws)))
  assert (np.sort(perms, axis=1) == np.arange(n)).all()
  index = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
  counts = np.bincount([index[tuple(p)] for p in perms], minlength=120)
  assert counts.min() > 0
  assert chi2(counts, draws / 120) < 170  # 119 dof: p ~ 0.002
  for m in (1, 2, 500, 777):  # non-powers of two, and sizes the packing must handle
    p = np.asarray(base.permutation(jax.random.PRNGKey(m), m))
    assert p.dtype == np.int32 and sorted(p.tolist()) == list(range(m))
  # every position equally likely to hold every index (n = 500)
  first = np.asarray(jax.vmap(lambda k: base.permutation(k, 500)[0])(
      jax.random.split(jax.random.PRNGKey(3), 20_000)))
  counts = np.bincount(first // 50, minlength=10)  # ten bins of 50 indices
  assert chi2(counts, 2000) < 30  # 9 dof


def test_noise_sampling_has_the_distributions_law():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
  d = Categorical.from_logits(logits)
  noise = d.noise(jax.random.PRNGKey(0), (40_000,))  # [40000, 2, 3]
  assert noise.shape == (40_000, 2, 3)
  a = np.asarray(jax.vmap(d.sample_from)(noise))  # [40000, 2]
  for row, probs in enumerate(([0.1, 0.2, 0.7], [0.5, 0.25, 0.25])):
    freq = np.bincount(a[:, row], minlength=3) / len(a)
    np.testing.assert_allclose(freq, probs, atol=0.01)
  # works on the abstract distribution jax.eval_shape returns (as rollouts use it)
  abstract = jax.eval_shape(Categorical.from_logits, logits)
  assert abstract.noise(jax.random.PRNGKey(1), (7,)).shape == (7, 2, 3)
  g = DiagGaussian(jnp.array([1.0, -2.0]), jnp.log(jnp.array([0.5, 3.0])))
  x = np.asarray(jax.vmap(g.sample_from)(g.noise(jax.random.PRNGKey(2), (40_000,))))
  np.testing.assert_allclose(x.mean(0), [1.0, -2.0], atol=0.05)
  np.testing.assert_allclose(x.std(0), [0.5, 3.0], rtol=0.03)


def test_auto_reset_uses_a_presampled_reset():
  env = envs.AutoReset(envs.CartPole())
  p = env.default_params
  _, s = env.reset(jax.random.PRNGKey(0), p)
  s = s.replace(x=jnp.float32(2.39), x_dot=jnp.float32(5.0))  # leaves the track this step
  r_obs = jnp.array([0.01, 0.02, 0.03, 0.04])
  r_state = s.replace(x=r_obs[0], x_dot=r_obs[1], theta=r_obs[2], theta_dot=r_obs[3],
                      time=jnp.int32(0))
  obs, s2, _, term, _, info = env.step(jax.random.PRNGKey(1), s, 1, p, reset=(r_obs, r_state))
  assert bool(term) and float(info["final_obs"][0]) > 2.4
  np.testing.assert_array_equal(obs, r_obs)
  assert int(s2.time) == 0 and float(s2.x) == np.float32(0.01)
  # not ended: the presampled reset is ignored
  _, s = env.reset(jax.random.PRNGKey(2), p)
  obs, s3, *_ = env.step(jax.random.PRNGKey(1), s, 1, p, reset=(r_obs, r_state))
  assert int(s3.time) == 1 and float(obs[0]) != np.float32(0.01)


def test_presampled_resets_are_env_reset_draws():
  runner = rollout.EnvRunner.create(envs.CartPole(), envs.CartPole().default_params, 3)
  obs, state = runner.presample_resets(jax.random.PRNGKey(0), 50)
  assert obs.shape == (50, 3, 4) and state.time.shape == (50, 3)
  o = np.asarray(obs)
  assert np.all(np.abs(o) <= 0.05) and np.all(np.asarray(state.time) == 0)
  assert len(np.unique(o[..., 0])) == 150  # independent draws
  np.testing.assert_array_equal(o[..., 2], np.asarray(state.theta))


def test_blockwise_evaluation_matches_the_per_step_key_path():
  """Uniform-random CartPole policy: episode lengths from the noise path (blocks of 4
  steps) and from the per-step key path have the same law; the step cap holds."""
  c = base_config("ppo", "CartPole-v1")
  c.train.eval_greedy = False
  p = loop.plan(c)
  state = p.algo.init(jax.random.PRNGKey(0))  # policy head gain 0.01: ~uniform actions
  algo = p.algo
  act_key = lambda obs, k: algo.act(state, obs, k, False)
  act_noise = lambda obs, n: algo.act(state, obs, None, False, noise=n)
  noise = lambda obs, k, n: jax.eval_shape(algo.policy, state, obs).noise(k, (n,))
  run = jax.jit(lambda k, cap, use_noise: rollout.evaluate(
      p.env, p.env_params, act_noise if use_noise else act_key, k, 4000, cap,
      noise=noise if use_noise else None, block=4), static_argnums=(1, 2))
  ret_n, len_n = map(np.asarray, run(jax.random.PRNGKey(1), 10_000, True))
  ret_k, len_k = map(np.asarray, run(jax.random.PRNGKey(2), 10_000, False))
  np.testing.assert_array_equal(ret_n, len_n)  # reward 1 per step, no steps after the end
  assert abs(len_n.mean() - len_k.mean()) < 1.0, (len_n.mean(), len_k.mean())  # ~22 +- 0.2
  assert abs(len_n.std() - len_k.std()) < 1.0
  ret_c, len_c = map(np.asarray, run(jax.random.PRNGKey(1), 7, True))
  assert len_c.max() == 7 and np.all(len_c == np.minimum(len_n, 7))


@pytest.mark.parametrize("algo_name", ["ppo", "reinforce", "trpo"])
def test_bind_unravels_once_and_keeps_every_number(algo_name):
  """Algorithm.bind moves the flat-parameter unravel out of evaluation loops: the
  bound state's policy and the whole evaluation equal the unbound ones exactly, and
  the evaluation's inner loop no longer slices the flat vector."""
  c = base_config(algo_name, "CartPole-v1")
  c.train.eval_greedy = False
  p = loop.plan(c)
  algo = p.algo
  state = algo.init(jax.random.PRNGKey(0))
  bound = algo.bind(state)
  assert isinstance(bound.params, dict) and not isinstance(state.params, dict)
  obs = jax.random.normal(jax.random.PRNGKey(1), (7, 4))
  np.testing.assert_array_equal(np.asarray(algo.policy(bound, obs).logits),
                                np.asarray(algo.policy(state, obs).logits))
  act = lambda obs, n: algo.act(state, obs, None, False, noise=n)  # unbound, per step
  noise = lambda obs, k, n: jax.eval_shape(algo.policy, state, obs).noise(k, (n,))
  unbound = jax.jit(lambda k: rollout.evaluate(p.env, p.env_params, act, k, 64, 500,
                                               noise=noise))
  _check_bound_evaluation(unbound, jax.jit(lambda k: p.evaluate(state, k, 64)),
                          jax.random.PRNGKey(2), state.params.shape)


def _check_bound_evaluation(unbound, via_plan, key, flat_shape):
  """Equal evaluations; only the unbound one reads the flat vector inside its loop."""
  for a, b in zip(unbound(key), via_plan(key)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _loop_bodies_reading(jax.make_jaxpr(unbound)(key).jaxpr, flat_shape)  # check sees it
  assert not _loop_bodies_reading(jax.make_jaxpr(via_plan)(key).jaxpr, flat_shape), (
      "an evaluation loop still reads the flat vector")


def _loop_bodies_reading(jaxpr, shape, inside=False) -> bool:
  """Whether an equation inside a while loop's body reads an array of `shape`."""
  for eqn in jaxpr.eqns:
    if inside and any(getattr(v.aval, "shape", None) == shape for v in eqn.invars
                      if hasattr(v, "aval")):
      return True
    for name, sub in eqn.params.items():
      subs = sub if isinstance(sub, (tuple, list)) else [sub]
      for j in subs:
        j = getattr(j, "jaxpr", j)
        if hasattr(j, "eqns") and _loop_bodies_reading(
            j, shape, inside or (eqn.primitive.name == "while" and name == "body_jaxpr")):
          return True
  return False


def test_bind_in_dqn_evaluation():
  """DQN's evaluation through plan.evaluate (bound once) equals the unbound loop, whose
  body reads the flat vector while plan.evaluate's does not."""
  c = base_config("dqn", "CartPole-v1")
  p = loop.plan(c)
  state = p.algo.init(jax.random.PRNGKey(0))
  act = lambda obs, k: p.algo.act(state, obs, k, bool(c.train.eval_greedy))
  unbound = jax.jit(lambda k: rollout.evaluate(p.env, p.env_params, act, k, 32,
                                               int(c.train.eval_max_steps)))
  _check_bound_evaluation(unbound, jax.jit(lambda k: p.evaluate(state, k, 32)),
                          jax.random.PRNGKey(3), state.params.shape)
