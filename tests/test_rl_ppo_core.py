"""llmrl.rl.ppo_core against straightforward Python references and exact math."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.rl import ppo_core


def gae_reference(rewards, values, dones, last_value, mask, gamma, lam):
  """A plain Python loop: masked steps are skipped (transparent), dones cut the recursion."""
  B, T = rewards.shape
  adv = np.zeros((B, T))
  for b in range(B):
    next_value, next_adv = last_value[b], 0.0
    for t in reversed(range(T)):
      if not mask[b, t]:
        continue
      nd = 0.0 if dones[b, t] else 1.0
      delta = rewards[b, t] + gamma * nd * next_value - values[b, t]
      next_adv = delta + gamma * lam * nd * next_adv
      adv[b, t] = next_adv
      next_value = values[b, t]
  return adv, (adv + values) * mask


@pytest.mark.parametrize("pad", ["none", "right", "random"])
def test_gae_matches_python_loop(pad):
  rng = np.random.default_rng(0)
  B, T, gamma, lam = 5, 17, 0.97, 0.9
  rewards = rng.normal(size=(B, T))
  values = rng.normal(size=(B, T))
  dones = rng.random((B, T)) < 0.2
  last = rng.normal(size=B)
  mask = np.ones((B, T), bool)
  if pad == "right":
    for b, n in enumerate([17, 12, 5, 1, 9]):
      mask[b, n:] = False
  elif pad == "random":
    mask = rng.random((B, T)) < 0.7
  # Garbage in padded positions must not leak.
  rewards_in = np.where(mask, rewards, 1e6)
  values_in = np.where(mask, values, -1e6)
  adv, ret = ppo_core.gae(jnp.asarray(rewards_in, jnp.float32), jnp.asarray(values_in, jnp.float32),
                          jnp.asarray(dones), jnp.asarray(last, jnp.float32), gamma=gamma, lam=lam,
                          mask=jnp.asarray(mask))
  ref_adv, ref_ret = gae_reference(rewards, values, dones, last, mask, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[~mask] == 0)


def test_discounted_returns_closed_form():
  r = jnp.ones((1, 4))
  out = ppo_core.discounted_returns(r, jnp.array([[0, 1, 0, 0]], bool), jnp.array([10.0]),
                                    gamma=0.5)
  # episode 1: steps 0-1 -> 1 + 0.5, 1; episode 2: 1 + .5 + .25*10, 1 + .5*10
  np.testing.assert_allclose(out, [[1.5, 1.0, 1 + 0.5 + 0.25 * 10, 1 + 5.0]], rtol=1e-6)


def test_whiten_and_masked_stats_ignore_padding():
  x = jnp.array([[1.0, 2.0, 3.0, 99.0]])
  m = jnp.array([[1, 1, 1, 0]])
  assert float(ppo_core.masked_mean(x, m)) == pytest.approx(2.0)
  assert float(ppo_core.masked_var(x, m)) == pytest.approx(1.0)
  w = np.asarray(ppo_core.whiten(x, m))
  np.testing.assert_allclose(w[0, :3], [-1, 0, 1], atol=1e-6)
  assert w[0, 3] == 0
  w2 = np.asarray(ppo_core.whiten(x, m, shift_mean=False))
  np.testing.assert_allclose(w2[0, :3], [1, 2, 3], atol=1e-6)


def test_kl_estimators_expectation_equals_exact_kl():
  """E_q[k1] = E_q[k3] = KL(q||p) exactly (sum over the support); k2 is close, >= 0."""
  q = np.array([0.5, 0.3, 0.2])
  p = np.array([0.4, 0.4, 0.2])
  exact = float(np.sum(q * np.log(q / p)))
  lq, lp = jnp.log(jnp.asarray(q)), jnp.log(jnp.asarray(p))
  for kind in ("k1", "k3"):
    est = float(jnp.sum(jnp.asarray(q) * ppo_core.kl_estimate(lq, lp, kind)))
    assert est == pytest.approx(exact, rel=1e-5), kind
  k2 = float(jnp.sum(jnp.asarray(q) * ppo_core.kl_estimate(lq, lp, "k2")))
  assert k2 == pytest.approx(exact, rel=0.1)
  assert np.all(np.asarray(ppo_core.kl_estimate(lq, lp, "k3")) >= 0)
  with pytest.raises(ValueError):
    ppo_core.kl_estimate(lq, lp, "k4")


def test_ratio_one_and_kl_zero_when_policies_equal():
  logp = jnp.log(jnp.array([0.2, 0.5, 0.9]))
  adv = jnp.array([1.0, -2.0, 0.5])
  loss, st = ppo_core.clipped_surrogate_loss(logp, logp, adv, clip_eps=0.2)
  assert float(st["ratio_mean"]) == 1.0 and float(st["approx_kl"]) == 0.0
  assert float(st["clip_frac"]) == 0.0
  assert float(loss) == pytest.approx(-float(jnp.mean(adv)))


def test_clipped_surrogate_hand_computed():
  old = jnp.log(jnp.array([0.5, 0.5]))
  new = jnp.log(jnp.array([0.8, 0.2]))  # ratios 1.6 and 0.4
  adv = jnp.array([1.0, -1.0])
  loss, st = ppo_core.clipped_surrogate_loss(new, old, adv, clip_eps=0.2)
  # min(1.6*1, 1.2*1) = 1.2; min(0.4*-1, 0.8*-1) = -0.8 -> mean 0.2
  assert float(loss) == pytest.approx(-0.2, abs=1e-6)
  assert float(st["clip_frac"]) == 1.0
  # masked: only the first element counts
  loss_m, _ = ppo_core.clipped_surrogate_loss(new, old, adv, clip_eps=0.2,
                                              mask=jnp.array([1, 0]))
  assert float(loss_m) == pytest.approx(-1.2, abs=1e-6)


def test_value_loss_clipping():
  v, old, ret = jnp.array([2.0]), jnp.array([0.0]), jnp.array([3.0])
  assert float(ppo_core.value_loss(v, old, ret)) == pytest.approx(0.5)
  # clipped prediction 0.2 -> error 2.8^2 dominates
  assert float(ppo_core.value_loss(v, old, ret, clip_eps=0.2)) == pytest.approx(0.5 * 2.8 ** 2)


def test_kl_penalty_loss():
  logp = jnp.log(jnp.array([0.5, 0.25]))
  adv = jnp.array([1.0, 2.0])
  kl = jnp.array([0.1, 0.3])
  loss, st = ppo_core.kl_penalty_loss(logp, logp, adv, kl, beta=2.0)
  assert float(loss) == pytest.approx(-1.5 + 2.0 * 0.2)
  assert float(st["kl"]) == pytest.approx(0.2)


@pytest.mark.parametrize("kl,expected", [(0.02, 2.0), (0.016, 2.0), (0.01, 1.0),
                                         (0.008, 1.0), (0.005, 0.5), (0.0, 0.5)])
def test_adaptive_kl_moves_the_right_way(kl, expected):
  # target 0.01: above 0.015 doubles, below 0.00667 halves, otherwise unchanged
  assert float(ppo_core.adaptive_kl_update(jnp.float32(1.0), jnp.float32(kl), 0.01)) == expected


def test_proportional_kl_controller():
  up = ppo_core.proportional_kl_update(1.0, 0.02, 0.01, n_steps=100, horizon=1000)
  down = ppo_core.proportional_kl_update(1.0, 0.0, 0.01, n_steps=100, horizon=1000)
  assert float(up) == pytest.approx(1 + 0.2 * 0.1) and float(down) == pytest.approx(1 - 0.2 * 0.1)


def test_explained_variance():
  r = jnp.array([1.0, 2.0, 3.0, 4.0])
  assert float(ppo_core.explained_variance(r, r)) == pytest.approx(1.0)
  assert float(ppo_core.explained_variance(jnp.full(4, 2.5), r)) == pytest.approx(0.0, abs=1e-6)


def test_token_level_use_is_jittable():
  """The RLHF shape: [batch, tokens] with right padding, under jit."""
  B, T = 3, 6
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
  f = jax.jit(lambda r, v: ppo_core.gae(r, v, jnp.zeros((B, T), bool), jnp.zeros(B),
                                        gamma=1.0, lam=0.95, mask=mask))
  adv, ret = f(jnp.ones((B, T)), jnp.zeros((B, T)))
  # gamma=1, values 0: advantage at t = sum_k lam^k over the remaining real tokens
  n = 4
  expect = sum(0.95 ** k for k in range(n))
  assert float(adv[1, 0]) == pytest.approx(expect, rel=1e-6)
  assert math.isclose(float(adv[2, 5]), 0.0)
