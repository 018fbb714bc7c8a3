"""Optimizer and learning-rate schedule factory, built from `config.optim`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from llmrl.config import ConfigError, check_enum, check_positive

OPTIMIZERS = ("adamw", "adafactor", "lion", "sgd")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")


def default_config() -> ml_collections.ConfigDict:
  """The `config.optim` block shared by every training experiment."""
  c = ml_collections.ConfigDict()
  c.name = "adamw"          # one of OPTIMIZERS
  c.learning_rate = 3e-4    # peak learning rate
  c.schedule = "cosine"     # decay after warmup: one of SCHEDULES
  c.warmup_steps = 100      # linear warmup from 0 to the peak
  c.min_lr_ratio = 0.1      # final lr = peak * min_lr_ratio (cosine, linear)
  c.weight_decay = 0.1      # decoupled; not applied to 1-D params (norms, biases)
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.grad_clip = 1.0         # clip by global norm; 0 disables
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks config.optim before anything is built."""
  check_enum("optim.name", c.name, OPTIMIZERS)
  check_enum("optim.schedule", c.schedule, SCHEDULES)
  check_positive("optim.learning_rate", c.learning_rate, allow_zero=True)
  check_positive("optim.warmup_steps", c.warmup_steps, allow_zero=True)
  check_positive("optim.grad_clip", c.grad_clip, allow_zero=True)
  if not 0.0 <= c.min_lr_ratio <= 1.0:
    raise ConfigError(f"config.optim.min_lr_ratio={c.min_lr_ratio} must be in [0, 1].")


def make_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Warmup then the configured decay, reaching its floor at `total_steps`."""
  peak, warm = c.learning_rate, int(c.warmup_steps)
  floor = peak * c.min_lr_ratio
  decay_steps = max(total_steps - warm, 1)
  if c.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=c.min_lr_ratio)
  elif c.schedule == "linear":
    decay = optax.linear_schedule(peak, floor, decay_steps)
  elif c.schedule == "rsqrt":
    # lr = peak * sqrt(warm / step) after warmup (T5 / "Attention is all you need").
    decay = lambda s: peak * jax.lax.rsqrt(
        (jnp.asarray(s, jnp.float32) + max(warm, 1)) / max(warm, 1))
  else:
    decay = optax.constant_schedule(peak)
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def _decay_mask(params):
  """Weight decay only on matrices (ndim >= 2): not on norms, biases or scalars.

  Leaves under a "layers" key are a scanned stack (GPTConfig.scan_layers) with a
  leading [num_layers] axis that does not count.
  """
  def is_matrix(path, p):
    stacked = any(getattr(k, "key", None) == "layers" for k in path)
    return p.ndim - stacked >= 2

  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int,
                   mask=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule). `mask` (a pytree of bools) freezes False leaves."""
  validate(c)
  lr = make_schedule(c, total_steps)
  if c.name == "adamw":
    opt = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps,
                      weight_decay=c.weight_decay, mask=_decay_mask)
  elif c.name == "adafactor":
    opt = optax.adafactor(lr, weight_decay_rate=c.weight_decay or None,
                          weight_decay_mask=_decay_mask)
  elif c.name == "lion":
    opt = optax.lion(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                     mask=_decay_mask)
  else:
    opt = optax.sgd(lr, momentum=c.b1 or None)
  parts = [optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip else []
  tx = optax.chain(*parts, opt)
  if mask is not None:
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               jax.tree.map(lambda m: "train" if m else "freeze", mask))
  return tx, lr
