"""Dense / tied-logits contractions with their own backward pass, and the LM accuracy metric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.models.layers import contract, tied_logits
from llmrl.objectives.lm import causal_lm_loss
from llmrl.train.step import compiler_options


def _np_tensordot_grads(x, k, w, in_axes):
  """float64 numpy reference: y = x . k over in_axes; L = sum(y * w) -> (y, dL/dx, dL/dk)."""
  x, k, w = (np.asarray(a, np.float64) for a in (x, k, w))
  y = np.tensordot(x, k, axes=in_axes)
  n_out = k.ndim - in_axes
  n_batch = x.ndim - in_axes
  dx = np.tensordot(w, k, axes=(list(range(w.ndim - n_out, w.ndim)),
                                list(range(in_axes, k.ndim))))
  dk = np.tensordot(x, w, axes=(list(range(n_batch)), list(range(n_batch))))
  return y, dx, dk


@pytest.mark.parametrize("kernel_shape,in_axes", [
    ((5, 7), 1),        # in < out: the input is transposed for the weight gradient
    ((7, 5), 1),        # in > out: the gradient is transposed instead
    ((6, 2, 3), 1),     # query-style kernel [embed, heads, head_dim]
    ((2, 3, 6), 2),     # output-style kernel [heads, head_dim, embed]
])
def test_contract_values_and_grads_match_numpy(kernel_shape, in_axes):
  rng = np.random.RandomState(0)
  x = rng.randn(2, 4, *kernel_shape[:in_axes]).astype(np.float32)
  k = rng.randn(*kernel_shape).astype(np.float32)
  w = rng.randn(2, 4, *kernel_shape[in_axes:]).astype(np.float32)
  loss = lambda x, k: jnp.sum(contract(x, k, in_axes) * w)  # noqa: E731
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
               compiler_options=compiler_options("cpu"))
  assert "opt-barrier" in fn.lower(x, k).compile().as_text()  # the CPU branch is the one run
  (val, (dx, dk)) = fn(x, k)
  y_ref, dx_ref, dk_ref = _np_tensordot_grads(x, k, w, in_axes)
  np.testing.assert_allclose(contract(x, k, in_axes), y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(val, np.sum(y_ref * w), rtol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)


def test_tied_logits_values_and_grads_match_numpy():
  rng = np.random.RandomState(1)
  x = rng.randn(2, 3, 4).astype(np.float32)   # [batch, length, embed]
  emb = rng.randn(9, 4).astype(np.float32)    # [vocab, embed]
  w = rng.randn(2, 3, 9).astype(np.float32)
  fn = jax.jit(jax.grad(lambda x, e: jnp.sum(tied_logits(x, e) * w), argnums=(0, 1)),
               compiler_options=compiler_options("cpu"))
  dx, de = fn(x, emb)
  x64, e64, w64 = (a.astype(np.float64) for a in (x, emb, w))
  np.testing.assert_allclose(tied_logits(x, emb), np.einsum("bld,vd->blv", x64, e64),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, np.einsum("blv,vd->bld", w64, e64), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(de, np.einsum("blv,bld->vd", w64, x64), rtol=1e-5, atol=1e-5)


def test_lm_accuracy_counts_target_argmax():
  rng = np.random.RandomState(2)
  logits = rng.randn(3, 5, 11).astype(np.float32)
  targets = rng.randint(0, 11, (3, 5))
  targets[0, :3] = logits[0, :3].argmax(-1)  # some right answers
  weights = (rng.rand(3, 5) > 0.3).astype(np.float32)
  _, (_, sums) = causal_lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  expected = np.sum((logits.argmax(-1) == targets) * weights)
  assert expected >= 2
  np.testing.assert_allclose(sums["accuracy"], expected)
