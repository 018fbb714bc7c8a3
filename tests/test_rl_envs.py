"""Environments: CartPole against the Barto-Sutton-Anderson equations (numpy) and
gymnasium, FrozenLake's slip probabilities, the bandit, wrappers, gymnax adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.config import ConfigError
from llmrl.rl import envs
from llmrl.rl.envs.cartpole import CartPoleState

G, MC, MP, L, FMAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02


def bsa_step(s, action):
  """Barto, Sutton & Anderson (1983) cart-pole, Euler step, written from the paper's formulas."""
  x, x_dot, th, th_dot = s
  F = FMAG if action == 1 else -FMAG
  th_acc = (G * np.sin(th) + np.cos(th) * (-F - MP * L * th_dot ** 2 * np.sin(th)) / (MC + MP)) / (
      L * (4.0 / 3.0 - MP * np.cos(th) ** 2 / (MC + MP)))
  x_acc = (F + MP * L * (th_dot ** 2 * np.sin(th) - th_acc * np.cos(th))) / (MC + MP)
  return np.array([x + TAU * x_dot, x_dot + TAU * x_acc, th + TAU * th_dot, th_dot + TAU * th_acc])


def test_cartpole_dynamics_match_reference_equations():
  env = envs.CartPole()
  p = env.default_params
  step = jax.jit(env.step)
  rng = np.random.default_rng(0)
  for _ in range(20):
    s = rng.uniform(-0.2, 0.2, 4) * np.array([5, 5, 1, 5])
    a = int(rng.integers(2))
    state = CartPoleState(*[jnp.float32(v) for v in s], jnp.int32(3))
    obs, new, reward, term, trunc, _ = step(jax.random.PRNGKey(0), state, a, p)
    np.testing.assert_allclose(np.asarray(obs), bsa_step(s, a), rtol=1e-5, atol=1e-6)
    ref = bsa_step(s, a)
    assert bool(term) == bool(abs(ref[0]) > 2.4 or abs(ref[2]) > 12 * 2 * np.pi / 360)
    assert float(reward) == 1.0 and int(new.time) == 4 and not bool(trunc)


def test_cartpole_matches_gymnasium_trajectory():
  gym = pytest.importorskip("gymnasium")
  genv = gym.make("CartPole-v1").unwrapped
  genv.reset(seed=0)
  env, p = envs.CartPole(), envs.CartPole().default_params
  s0 = np.array([0.01, -0.02, 0.03, 0.01])
  genv.state = s0.copy()
  state = CartPoleState(*[jnp.float32(v) for v in s0], jnp.int32(0))
  step = jax.jit(env.step)
  actions = np.random.default_rng(1).integers(0, 2, 40)
  for a in actions:
    g_obs, g_r, g_term, _, _ = genv.step(int(a))
    obs, state, r, term, _, _ = step(jax.random.PRNGKey(0), state, int(a), p)
    np.testing.assert_allclose(np.asarray(obs), g_obs, rtol=1e-4, atol=1e-5)
    assert bool(term) == g_term and float(r) == g_r
    if g_term:
      break


def test_cartpole_truncates_at_500():
  env = envs.CartPole()
  p = env.default_params
  state = CartPoleState(*[jnp.float32(0)] * 4, jnp.int32(499))
  _, _, _, term, trunc, _ = env.step(jax.random.PRNGKey(0), state, 1, p)
  assert bool(trunc) and not bool(term)


def test_frozen_lake_slip_probabilities_and_terminals():
  env = envs.FrozenLake()
  p = env.default_params
  _, s = env.reset(jax.random.PRNGKey(0), p)
  # From the start (cell 0), action "down" (1): intended down (4) 1/3, perpendicular
  # left (stays at 0) 1/3 and right (1) 1/3.
  keys = jax.random.split(jax.random.PRNGKey(1), 30000)
  pos = np.asarray(jax.vmap(lambda k: env.step(k, s, 1, p)[0])(keys))
  freq = np.bincount(pos, minlength=16)[[0, 1, 4]] / len(pos)
  np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.015)
  # Cell 14, action right -> goal (15) with reward 1 and termination 1/3 of the time.
  s14 = s.replace(pos=jnp.int32(14))
  out = jax.vmap(lambda k: env.step(k, s14, 2, p))(keys[:3000])
  reached = np.asarray(out[0]) == 15
  assert abs(reached.mean() - 1 / 3) < 0.04
  np.testing.assert_array_equal(np.asarray(out[2]) == 1.0, reached)
  np.testing.assert_array_equal(np.asarray(out[3]), reached)
  # Cell 4, action right: hole 5 (terminated, reward 0) 1/3 of the time, else 0 or 8 (not
  # terminal).
  s4 = s.replace(pos=jnp.int32(4))
  o, _, r, term, trunc, _ = jax.vmap(lambda k: env.step(k, s4, 2, p))(keys[:3000])
  o, r, term = np.asarray(o), np.asarray(r), np.asarray(term)
  assert set(np.unique(o)) == {0, 5, 8} and abs((o == 5).mean() - 1 / 3) < 0.04
  np.testing.assert_array_equal(term, o == 5)
  assert np.all(r == 0.0) and not np.any(np.asarray(trunc))
  # Without slip the same move always falls in; a hole is absorbing.
  firm = envs.FrozenLake(slippery=False)
  o, s5, r, term, trunc, _ = firm.step(jax.random.PRNGKey(3), s4, 2, p)
  assert (int(o), float(r), bool(term), bool(trunc)) == (5, 0.0, True, False)
  assert int(firm.step(jax.random.PRNGKey(4), s5, 1, p)[0]) == 5


def test_bandit_rewards():
  env = envs.Bandit()
  p = env.default_params
  _, s = env.reset(jax.random.PRNGKey(0), p)
  keys = jax.random.split(jax.random.PRNGKey(1), 20000)
  r = jax.vmap(lambda k: env.step(k, s, 3, p)[2])(keys)
  assert float(jnp.mean(r)) == pytest.approx(0.9, abs=0.03)
  assert bool(env.step(keys[0], s, 0, p)[3])  # one-step episodes


def test_auto_reset_and_episode_stats():
  env = envs.EpisodeStats(envs.AutoReset(envs.CartPole()))
  p = env.default_params
  obs, s = env.reset(jax.random.PRNGKey(0), p)
  step = jax.jit(env.step)
  returns, t, key = [], 0, jax.random.PRNGKey(1)
  while len(returns) < 3 and t < 2000:
    key, k = jax.random.split(key)
    obs, s, r, term, trunc, info = step(k, s, 1, p)  # always push right: falls fast
    t += 1
    if bool(term | trunc):
      returns.append(float(info["episode_return"]))
      assert int(s.env_state.time) == 0 and abs(float(obs[0])) <= 0.05  # reset happened
      assert abs(float(info["final_obs"][2])) > 0.2 or abs(float(info["final_obs"][0])) > 2.4
    else:
      assert float(info["episode_return"]) == 0.0
  assert len(returns) == 3 and sum(returns) == t  # every step's reward 1 is in one episode


def test_gymnax_adapter_separates_termination_and_truncation():
  pytest.importorskip("gymnax")
  env = envs.make("gymnax:CartPole-v1")
  p = env.default_params
  obs, s = env.reset(jax.random.PRNGKey(0), p)
  # Same state through our CartPole and gymnax's: same next observation.
  ours = envs.CartPole()
  ostate = CartPoleState(s.x, s.x_dot, s.theta, s.theta_dot, jnp.int32(0))
  o1 = env.step(jax.random.PRNGKey(1), s, 1, p)[0]
  o2 = ours.step(jax.random.PRNGKey(1), ostate, 1, ours.default_params)[0]
  np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
  s_late = s.replace(time=499)
  _, _, _, term, trunc, _ = env.step(jax.random.PRNGKey(1), s_late, 1, p)
  assert bool(trunc) and not bool(term)
  s_fall = s.replace(theta=jnp.float32(0.3), time=10)
  _, _, _, term, trunc, _ = env.step(jax.random.PRNGKey(1), s_fall, 1, p)
  assert bool(term) and not bool(trunc)
  assert envs.make("Acrobot-v1").name == "Acrobot-v1"  # plain gymnax names work too


def test_unknown_environment_lists_close_names():
  with pytest.raises(ConfigError, match="CartPole-v1"):
    envs.make("CartPol-v1")
  with pytest.raises(ConfigError, match="not a known environment"):
    envs.make("Zzzzz")
