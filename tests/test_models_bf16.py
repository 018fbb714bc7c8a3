"""bf16 compute on CPU: Dense, tied logits, bias, blockwise and plain attention accumulate in float32
and their matmuls keep bf16 operands (XLA runs those on AMX; float32 upcasts are ~5x slower)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.models.attention import attend
from llmrl.models.layers import Dense, contract, row_major_t, tied_logits
from llmrl.train.step import compiler_options

BF16 = jnp.bfloat16


def _bf16(rng, *shape):
  """A bf16 array and its exact float64 value."""
  x = jnp.asarray(rng.randn(*shape), BF16)
  return x, np.asarray(x.astype(jnp.float32), np.float64)


def _dot_operand_types(hlo: str) -> list:
  """Element types of every dot's operands in an optimised HLO module."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
  return [[types[name] for name in re.findall(r"%([\w.\-]+)", m)]
          for m in re.findall(r" dot\(([^)]*)\)", hlo)]


def _compiled(fn, *args) -> str:
  return jax.jit(fn, compiler_options=compiler_options("cpu")).lower(*args).compile().as_text()


def _assert_bf16_dots(fn, *args, count: int, at_least: bool = False):
  """Every dot of fn's compiled CPU program reads bf16 operands, and there are `count`
  of them (or at least `count`)."""
  ops = _dot_operand_types(_compiled(fn, *args))
  assert (len(ops) >= count if at_least else len(ops) == count), ops
  assert all(t == ["bf16", "bf16"] for t in ops), ops


def _rel_err(g, ref) -> float:
  """Largest deviation from ref, relative to ref's largest magnitude."""
  return float(jnp.max(jnp.abs(g.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))


def _close(a, ref, scale):
  """bf16 outputs: each value rounded once (2^-8 relative) after float32 accumulation."""
  np.testing.assert_allclose(np.asarray(jnp.asarray(a, jnp.float32)), ref, rtol=2e-2,
                             atol=2e-2 * scale)


@pytest.mark.parametrize("kernel_shape,in_axes", [
    ((24, 40), 1), ((40, 24), 1), ((24, 2, 8), 1), ((2, 8, 24), 2)])
def test_bf16_contract_values_grads_and_dots(kernel_shape, in_axes):
  rng = np.random.RandomState(0)
  x, x64 = _bf16(rng, 3, 16, *kernel_shape[:in_axes])
  k, k64 = _bf16(rng, *kernel_shape)
  w, w64 = _bf16(rng, 3, 16, *kernel_shape[in_axes:])
  loss = lambda x, k: jnp.sum(contract(x, k, in_axes).astype(jnp.float32) * w)  # noqa: E731
  fn = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=compiler_options("cpu"))
  dx, dk = fn(x, k)
  assert contract(x, k, in_axes).dtype == BF16 and dx.dtype == BF16 and dk.dtype == BF16
  n_out, n_batch = k.ndim - in_axes, 2
  y_ref = np.tensordot(x64, k64, axes=in_axes)
  dx_ref = np.tensordot(w64, k64, axes=(list(range(w.ndim - n_out, w.ndim)),
                                        list(range(in_axes, k.ndim))))
  dk_ref = np.tensordot(x64, w64, axes=(list(range(n_batch)), list(range(n_batch))))
  _close(jax.jit(contract, static_argnums=2)(x, k, in_axes), y_ref, np.abs(y_ref).max())
  _close(dx, dx_ref, np.abs(dx_ref).max())
  _close(dk, dk_ref, np.abs(dk_ref).max())
  # Every matmul of the forward and backward pass reads bf16 operands (no float32 upcast).
  _assert_bf16_dots(jax.value_and_grad(loss, argnums=(0, 1)), x, k, count=3)


def test_bf16_tied_logits_values_grads_and_dots():
  rng = np.random.RandomState(1)
  x, x64 = _bf16(rng, 2, 8, 16)    # [batch, length, embed]
  e, e64 = _bf16(rng, 48, 16)      # [vocab, embed]
  w, w64 = _bf16(rng, 2, 8, 48)
  loss = lambda x, e: jnp.sum(tied_logits(x, e).astype(jnp.float32) * w)  # noqa: E731
  dx, de = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=compiler_options("cpu"))(x, e)
  y_ref = np.einsum("bld,vd->blv", x64, e64)
  dx_ref, de_ref = np.einsum("blv,vd->bld", w64, e64), np.einsum("blv,bld->vd", w64, x64)
  _close(jax.jit(tied_logits)(x, e), y_ref, np.abs(y_ref).max())
  _close(dx, dx_ref, np.abs(dx_ref).max())
  _close(de, de_ref, np.abs(de_ref).max())
  _assert_bf16_dots(jax.value_and_grad(loss, argnums=(0, 1)), x, e, count=3)


def test_bf16_dense_bias_gradient_is_float32_row_sum():
  rng = np.random.RandomState(2)
  x, x64 = _bf16(rng, 4, 32, 12)
  w, w64 = _bf16(rng, 4, 32, 20)
  dense = Dense(20, ("embed", "mlp"), use_bias=True, dtype=BF16)
  params = nn.unbox(dense.init(jax.random.PRNGKey(0), x))["params"]
  params["bias"] = jnp.asarray(rng.randn(20), jnp.float32)
  loss = lambda p: jnp.sum(dense.apply({"params": p}, x).astype(jnp.float32) * w)  # noqa: E731
  grads = jax.jit(jax.grad(loss), compiler_options=compiler_options("cpu"))(params)
  assert grads["bias"].dtype == jnp.float32
  np.testing.assert_allclose(grads["bias"], w64.sum((0, 1)), rtol=1e-6, atol=1e-5)
  k64 = np.asarray(params["kernel"].astype(BF16).astype(jnp.float32), np.float64)
  b64 = np.asarray(params["bias"].astype(BF16).astype(jnp.float32), np.float64)
  y_ref = x64 @ k64 + b64
  _close(dense.apply({"params": params}, x), y_ref, np.abs(y_ref).max())


def test_row_major_t_is_a_transpose():
  a = jnp.arange(12.0, dtype=BF16).reshape(3, 4)
  t = jax.jit(row_major_t, compiler_options=compiler_options("cpu"))(a)
  np.testing.assert_array_equal(np.asarray(t, np.float32), np.asarray(a, np.float32).T)


@pytest.mark.parametrize("impl", ["blockwise", "plain"])
@pytest.mark.parametrize("causal", [True, False])
def test_bf16_attention_grads_match_float32_plain(causal, impl):
  rng = np.random.RandomState(3)
  q, k, v = (_bf16(rng, *s)[0] for s in ((2, 11, 4, 8), (2, 11, 2, 8), (2, 11, 2, 8)))  # GQA
  w = jnp.asarray(rng.randn(2, 11, 4, 8), jnp.float32)
  idx = jnp.arange(11)
  seg = jnp.array([[1] * 4 + [2] * 7, [1] * 8 + [0] * 3])  # packed row; right-padded row

  def loss(q, k, v, impl):
    out = attend(q, k, v, idx, idx, seg, seg, causal=causal, impl=impl, block_size=4)
    return jnp.sum(out.astype(jnp.float32) * w)

  grad = lambda impl: jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3,  # noqa: E731
                              compiler_options=compiler_options("cpu"))
  f32 = [a.astype(jnp.float32) for a in (q, k, v)]
  want = grad("plain")(*f32, "plain")  # float32 reference on the same (bf16-exact) inputs
  got = grad(impl)(q, k, v, impl)
  for name, g, ref in zip("qkv", got, want):
    assert g.dtype == BF16, name
    err = _rel_err(g, ref)
    assert err < 1e-2, (name, err)  # measured 0.25-0.7%; dp off by 1% gives 1.2-2.2%
  _assert_bf16_dots(lambda q, k, v: jax.grad(loss, argnums=(0, 1, 2))(q, k, v, impl), q, k, v,
                    count=6, at_least=True)


def test_bf16_plain_attention_with_bias_matches_float32():
  """T5's case: a float32 score bias broadcast over the batch, and its gradient."""
  rng = np.random.RandomState(5)
  q, k, v = (_bf16(rng, 2, 10, 4, 8)[0] for _ in range(3))
  bias = jnp.asarray(rng.randn(1, 4, 10, 10), jnp.float32)
  w = jnp.asarray(rng.randn(2, 10, 4, 8), jnp.float32)
  idx = jnp.arange(10)
  seg = jnp.array([[1] * 10, [1] * 7 + [0] * 3])

  def loss(q, k, v, bias):
    out = attend(q, k, v, idx, idx, seg, seg, causal=False, impl="plain", block_size=4,
                 bias=bias, scale=1.0)
    return jnp.sum(out.astype(jnp.float32) * w)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), compiler_options=compiler_options("cpu"))
  want = grad(*(a.astype(jnp.float32) for a in (q, k, v)), bias)
  got = grad(q, k, v, bias)
  for name, g, ref in zip(("q", "k", "v", "bias"), got, want):
    assert g.dtype == (jnp.float32 if name == "bias" else BF16), name
    err = _rel_err(g, ref)
    assert err < 1e-2, (name, err)
