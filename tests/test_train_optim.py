"""Optimizer and schedule factory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.config import ConfigError
from llmrl.train import optim


def cfg(**kw):
  c = optim.default_config()
  for k, v in kw.items():
    c[k] = v
  return c


def test_warmup_then_cosine_endpoints():
  s = optim.make_schedule(cfg(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1), 110)
  np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(s(60), 0.1 + 0.9 * 0.5, atol=1e-6)  # half-way down the cosine
  np.testing.assert_allclose(s(110), 0.1, atol=1e-6)


def test_linear_and_rsqrt():
  lin = optim.make_schedule(cfg(schedule="linear", learning_rate=2.0, warmup_steps=0,
                                min_lr_ratio=0.0), 100)
  np.testing.assert_allclose([lin(0), lin(50), lin(100)], [2.0, 1.0, 0.0], atol=1e-6)
  rs = optim.make_schedule(cfg(schedule="rsqrt", learning_rate=1.0, warmup_steps=4), 100)
  np.testing.assert_allclose(rs(4 + 12), np.sqrt(4 / 16), atol=1e-6)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_each_optimizer_minimises_a_quadratic(name):
  lr = {"adamw": 0.1, "adafactor": 0.1, "lion": 0.03, "sgd": 0.1}[name]
  tx, _ = optim.make_optimizer(cfg(name=name, learning_rate=lr, warmup_steps=0,
                                   schedule="constant", weight_decay=0.0), 200)
  params = {"w": jnp.full((4, 4), 3.0)}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p["w"] ** 2)
  for _ in range(200):
    g = jax.grad(loss)(params)
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  assert float(loss(params)) < 0.05 * 16 * 9


def test_weight_decay_skips_vectors_and_mask_freezes():
  tx, _ = optim.make_optimizer(cfg(learning_rate=1.0, warmup_steps=0, schedule="constant",
                                   weight_decay=0.5, grad_clip=0.0), 10,
                               mask={"w": True, "b": True, "frozen": False})
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,)), "frozen": jnp.ones((2, 2))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5)   # decoupled decay lr * wd * w
  np.testing.assert_allclose(updates["b"], 0.0)    # 1-D: no decay
  np.testing.assert_allclose(updates["frozen"], 0.0)


def test_bad_optimizer_config():
  with pytest.raises(ConfigError, match="adamw"):
    optim.make_optimizer(cfg(name="adamw2"), 10)
  with pytest.raises(ConfigError, match="min_lr_ratio"):
    optim.make_optimizer(cfg(min_lr_ratio=2.0), 10)
