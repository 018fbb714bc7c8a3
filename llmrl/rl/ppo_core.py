"""The PPO core shared by classic RL (llmrl.rl) and RLHF (llmrl.rlhf): pure functions.

Everything here is a pure function of arrays. Trajectory arrays are
batch-major, `[batch, time]` (classic RL: `[envs, steps]`; RLHF:
`[sequences, tokens]`), and every reduction takes an explicit `mask` of the
same shape (1 = a real step/token, 0 = padding), so token-level trajectories
with padding use the same code as environment rollouts. `mask=None` means all
ones.

API
---
Masked statistics
  masked_sum(x, mask) / masked_mean(x, mask) / masked_var(x, mask, unbiased=True)
  whiten(x, mask, shift_mean=True, eps=1e-8) -> x normalised to zero mean and
      unit variance over the masked entries (shift_mean=False keeps the mean,
      as RLHF reward whitening does); padding stays 0.
Returns and advantages
  gae(rewards, values, dones, last_value, *, gamma, lam, mask=None)
      -> (advantages, returns), both [B, T]. `dones[b, t]` = the episode ended
      at step t (the next value is not bootstrapped and the recursion
      restarts); `last_value[b]` = V(s_T), the bootstrap after the last step
      (0 for finished sequences). Masked steps are transparent: they get
      advantage 0 and the recursion passes through them unchanged, so right
      (or left) padding needs no special handling. returns = advantages + values.
  discounted_returns(rewards, dones, last_value, *, gamma, mask=None)
      -> Monte Carlo returns (gae with lam=1 and zero values).
Policy objectives (per-element log-probs of the taken actions/tokens)
  log_ratio_stats(logp, old_logp, mask) -> dict of ratio/KL diagnostics.
  clipped_surrogate_loss(logp, old_logp, advantages, *, clip_eps, mask=None)
      -> (loss, stats): -E[min(r A, clip(r, 1-eps, 1+eps) A)], r = exp(logp - old_logp);
      stats: ratio_mean, clip_frac, approx_kl (k3), kl_k1.
  kl_penalty_loss(logp, old_logp, advantages, kl, *, beta, mask=None)
      -> (loss, stats): -E[r A] + beta E[kl], with `kl` a per-element KL
      (exact, or an estimator from `kl_estimate`).
  value_loss(values, old_values, returns, *, clip_eps=None, mask=None)
      -> 0.5 E[max((v - R)^2, (old_v + clip(v - old_v, -eps, eps) - R)^2)]
      (unclipped when clip_eps or old_values is None).
  entropy_bonus(entropy, mask=None) -> masked mean entropy.
KL
  kl_estimate(logp_q, logp_p, kind) -> per-element estimate of KL(q || p) from
      samples x ~ q, for kind in {"k1", "k2", "k3"} (Schulman, "Approximating
      KL divergence", 2020): with log r = logp_p - logp_q,
      k1 = -log r (unbiased, high variance, can be negative),
      k2 = (log r)^2 / 2 (biased, low variance), k3 = (r - 1) - log r
      (unbiased, low variance, always >= 0).
      PPO: q = old policy (the sampler), p = new policy. RLHF: q = policy,
      p = reference model.
  adaptive_kl_update(beta, kl, target) -> new beta: doubled when
      kl > 1.5 target, halved when kl < target / 1.5 (PPO paper, sec. 4).
  proportional_kl_update(beta, kl, target, *, n_steps, horizon) -> new beta,
      Ziegler et al. (2019)'s controller used for RLHF:
      beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon).
Diagnostics
  explained_variance(values, returns, mask=None) -> 1 - Var[R - V] / Var[R].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _mask(x: Array, mask: Array | None) -> Array:
  return jnp.ones_like(x) if mask is None else mask.astype(x.dtype)


def masked_sum(x: Array, mask: Array | None = None, axis=None) -> Array:
  """Sum of x over the masked entries."""
  return jnp.sum(x * _mask(x, mask), axis=axis)


def masked_mean(x: Array, mask: Array | None = None, axis=None) -> Array:
  """Mean of x over the masked entries (0 when there are none)."""
  m = _mask(x, mask)
  return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def masked_var(x: Array, mask: Array | None = None, unbiased: bool = True) -> Array:
  """Variance of x over the masked entries (all axes)."""
  m = _mask(x, mask)
  n = jnp.sum(m)
  mean = jnp.sum(x * m) / jnp.maximum(n, 1.0)
  sq = jnp.sum(jnp.square(x - mean) * m)
  denom = jnp.maximum(n - 1.0, 1.0) if unbiased else jnp.maximum(n, 1.0)
  return sq / denom


def whiten(x: Array, mask: Array | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> Array:
  """x scaled to unit variance (and zero mean unless shift_mean=False) over the mask."""
  m = _mask(x, mask)
  mean = masked_mean(x, m)
  std = jnp.sqrt(masked_var(x, m))
  out = (x - mean) / (std + eps)
  if not shift_mean:
    out = out + mean
  return out * m


def gae(rewards: Array, values: Array, dones: Array, last_value: Array, *,
        gamma: float, lam: float, mask: Array | None = None) -> tuple[Array, Array]:
  """Generalised advantage estimates and value targets, [B, T] each.

  delta_t = r_t + gamma (1 - done_t) V_{t+1} - V_t,
  A_t = delta_t + gamma lam (1 - done_t) A_{t+1},
  where V_{t+1} and A_{t+1} come from the next *unmasked* step (or
  `last_value` and 0 after the last one).
  """
  m = _mask(rewards, mask)
  not_done = 1.0 - dones.astype(rewards.dtype)

  def step(carry, xs):
    next_value, next_adv = carry
    r, v, nd, mk = xs
    delta = r + gamma * nd * next_value - v
    adv = delta + gamma * lam * nd * next_adv
    keep = mk > 0
    new_carry = (jnp.where(keep, v, next_value), jnp.where(keep, adv, next_adv))
    return new_carry, jnp.where(keep, adv, 0.0)

  xs = tuple(jnp.swapaxes(a, 0, 1) for a in (rewards, values, not_done, m))  # [T, B]
  init = (last_value.astype(rewards.dtype), jnp.zeros_like(last_value, rewards.dtype))
  _, adv = jax.lax.scan(step, init, xs, reverse=True)
  adv = jnp.swapaxes(adv, 0, 1)  # [B, T]
  return adv, (adv + values) * m


def discounted_returns(rewards: Array, dones: Array, last_value: Array, *,
                       gamma: float, mask: Array | None = None) -> Array:
  """Monte Carlo discounted returns-to-go [B, T], bootstrapped with last_value."""
  _, returns = gae(rewards, jnp.zeros_like(rewards), dones, last_value,
                   gamma=gamma, lam=1.0, mask=mask)
  return returns


def kl_estimate(logp_q: Array, logp_p: Array, kind: str = "k3") -> Array:
  """Per-sample estimate of KL(q || p) from samples of q (see module docstring)."""
  log_r = logp_p - logp_q
  if kind == "k1":
    return -log_r
  if kind == "k2":
    return 0.5 * jnp.square(log_r)
  if kind == "k3":
    return jnp.expm1(log_r) - log_r
  raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def log_ratio_stats(logp: Array, old_logp: Array, mask: Array | None = None) -> dict:
  """Diagnostics of the new/old policy ratio over the masked samples."""
  log_r = logp - old_logp
  return {"ratio_mean": masked_mean(jnp.exp(log_r), mask),
          "approx_kl": masked_mean(kl_estimate(old_logp, logp, "k3"), mask),
          "kl_k1": masked_mean(kl_estimate(old_logp, logp, "k1"), mask)}


def clipped_surrogate_loss(logp: Array, old_logp: Array, advantages: Array, *,
                           clip_eps: float, mask: Array | None = None
                           ) -> tuple[Array, dict]:
  """PPO's clipped surrogate (to minimise) and its diagnostics."""
  ratio = jnp.exp(logp - old_logp)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  loss = -masked_mean(jnp.minimum(unclipped, clipped), mask)
  stats = log_ratio_stats(logp, old_logp, mask)
  stats["clip_frac"] = masked_mean(
      (jnp.abs(ratio - 1.0) > clip_eps).astype(logp.dtype), mask)
  return loss, stats


def kl_penalty_loss(logp: Array, old_logp: Array, advantages: Array, kl: Array, *,
                    beta: Array | float, mask: Array | None = None
                    ) -> tuple[Array, dict]:
  """PPO's KL-penalised surrogate -E[r A] + beta E[kl] (to minimise)."""
  ratio = jnp.exp(logp - old_logp)
  kl_mean = masked_mean(kl, mask)
  loss = -masked_mean(ratio * advantages, mask) + beta * kl_mean
  stats = log_ratio_stats(logp, old_logp, mask)
  stats["kl"] = kl_mean
  return loss, stats


def value_loss(values: Array, old_values: Array, returns: Array, *,
               clip_eps: float | None = None, mask: Array | None = None) -> Array:
  """Half squared error to the returns, optionally with PPO's value clipping."""
  err = jnp.square(values - returns)
  if clip_eps is not None and old_values is not None:
    clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    err = jnp.maximum(err, jnp.square(clipped - returns))
  return 0.5 * masked_mean(err, mask)


def entropy_bonus(entropy: Array, mask: Array | None = None) -> Array:
  """Mean policy entropy over the masked steps (add -coef * this to the loss)."""
  return masked_mean(entropy, mask)


def adaptive_kl_update(beta: Array, kl: Array, target: float) -> Array:
  """PPO's adaptive KL coefficient: x2 above 1.5 target, /2 below target / 1.5."""
  beta = jnp.where(kl > 1.5 * target, beta * 2.0, beta)
  return jnp.where(kl < target / 1.5, beta / 2.0, beta)


def proportional_kl_update(beta: Array, kl: Array, target: float, *, n_steps: int,
                           horizon: int) -> Array:
  """Ziegler et al.'s proportional KL controller (RLHF)."""
  error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
  return beta * (1.0 + error * n_steps / horizon)


def explained_variance(values: Array, returns: Array, mask: Array | None = None) -> Array:
  """1 - Var[returns - values] / Var[returns] over the masked entries."""
  var_r = masked_var(returns, mask)
  return 1.0 - masked_var(returns - values, mask) / jnp.maximum(var_r, 1e-8)
