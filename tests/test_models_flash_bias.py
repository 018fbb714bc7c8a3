"""Blockwise (flash-style) attention with an additive score bias, and T5 on it.

Reference: the plain einsum kernel (which test_models_t5 checks against a
numpy softmax(scale q.k + bias)) on the same inputs; T5 with attention_impl
"plain" on the same params.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl.models import T5, T5Config
from llmrl.models.attention import attend

BLOCK = 4  # 11 and 13 keys: the last key block is partial


def inputs(lq, lk, bias_batch, seed=0):
  """q [2, lq, 4, 8], k/v [2, lk, 2, 8] (GQA), bias [bias_batch, 4, lq, lk], all float32."""
  rng = np.random.default_rng(seed)
  shapes = ((2, lq, 4, 8), (2, lk, 2, 8), (2, lk, 2, 8), (bias_batch, 4, lq, lk))
  return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def run(impl, q, k, v, bias, q_index, k_index, q_seg, k_seg, causal):
  """(output, grads of q, k, v, bias) of sum(sin(attention))."""

  def f(q, k, v, bias):
    out = attend(q, k, v, q_index, k_index, q_seg, k_seg, causal=causal, impl=impl,
                 block_size=BLOCK, bias=bias, scale=0.7)
    return jnp.sum(jnp.sin(out)), out

  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(
    q, k, v, bias)
  return out, grads


@pytest.mark.parametrize("causal, bias_batch", [(False, 1), (True, 2), (True, 1)])
def test_self_attention_with_bias_matches_plain(causal, bias_batch):
  q, k, v, bias = inputs(11, 11, bias_batch)
  idx = jnp.arange(11)
  seg = jnp.array([[1] * 4 + [2] * 7, [1] * 8 + [0] * 3])  # packed row; right-padded row
  args = (q, k, v, bias, idx, idx, seg, seg, causal)
  ref_out, ref_grads = run("plain", *args)
  out, grads = run("blockwise", *args)
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  for name, g, want in zip(("q", "k", "v", "bias"), grads, ref_grads):
    assert g.shape == want.shape, name
    np.testing.assert_allclose(g, want, atol=1e-5, err_msg=name)
  assert float(jnp.abs(ref_grads[3]).max()) > 1e-3  # the bias gradient is not trivially zero


def test_cross_and_offset_queries_with_bias_match_plain():
  """Cross-attention shape (5 queries, 13 padded keys) and decode shape (queries at 10..12)."""
  q, k, v, bias = inputs(5, 13, 2, seed=1)
  k_seg = jnp.array([[1] * 13, [1] * 6 + [0] * 7])
  q_seg = jnp.ones((2, 5), jnp.int32)
  cross = (q, k, v, bias, jnp.arange(5), jnp.arange(13), q_seg, k_seg, False)
  decode = (q[:, :3], k, v, bias[:, :, :3], jnp.arange(10, 13), jnp.arange(13), None, None, True)
  for args in (cross, decode):
    ref_out, ref_grads = run("plain", *args)
    out, grads = run("blockwise", *args)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    for g, want in zip(grads, ref_grads):
      np.testing.assert_allclose(g, want, atol=1e-5)


def test_t5_blockwise_matches_plain_logits_and_grads():
  cfg = T5Config(vocab_size=37, num_layers=2, num_decoder_layers=2, d_model=32, num_heads=4,
                 d_ff=48, max_len=16, style="v1_1", relative_buckets=8, relative_max_distance=10,
                 attention_block_size=BLOCK)
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(1, 37, (2, 9)), jnp.int32)
  dec = jnp.asarray(rng.integers(1, 37, (2, 7)), jnp.int32)
  enc_mask = jnp.array([[1] * 9, [1] * 6 + [0] * 3])
  dec_mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
  params = nn.unbox(jax.jit(T5(cfg).init)(jax.random.key(0), enc, dec))["params"]
  # larger random relative-position tables than the init, so the bias matters
  params = jax.tree_util.tree_map_with_path(
    lambda p, x: x + 0.5 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
    if "relpos" in jax.tree_util.keystr(p) else x, params)

  def loss_and_logits(impl):
    model = T5(cfg.replace(attention_impl=impl))

    def f(p):
      logits = model.apply({"params": p}, enc, dec, enc_mask, dec_mask)  # [b, 7, vocab]
      return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * dec_mask), logits

    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (_, ref), ref_g = loss_and_logits("plain")
  (_, out), g = loss_and_logits("blockwise")
  np.testing.assert_allclose(out, ref, atol=1e-5)
  diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, ref_g)
  assert max(jax.tree.leaves(diffs)) < 1e-5, diffs
  relpos = [x for p, x in jax.tree_util.tree_leaves_with_path(g) if "relpos" in str(p)]
  assert relpos and all(float(jnp.abs(x).max()) > 0 for x in relpos)
