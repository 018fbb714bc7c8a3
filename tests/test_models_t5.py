"""Tests of the T5 encoder-decoder (llmrl.models.t5) and the shared blocks it adds, on tiny shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl.models import T5, T5Config, count_params, count_params_from_config, t5_flops_per_example
from llmrl.models.attention import attend
from llmrl.models.t5 import init_cache

VOCAB = 37


def tiny(**kw) -> T5Config:
  base = dict(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=48, max_len=16)
  return T5Config(**{**base, **kw})


CONFIGS = {
  "v1_0": tiny(style="v1_0"),
  "v1_1": tiny(
    style="v1_1", num_decoder_layers=1, head_dim=6, relative_buckets=8, relative_max_distance=10
  ),  # fmt: skip
}


@functools.lru_cache(maxsize=None)
def init(cfg, seed=0):
  """Random params shaped like T5(cfg)'s (numpy fill: avoids compiling init)."""
  shapes = nn.unbox(
    jax.eval_shape(
      T5(cfg).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32)
    )
  )["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.3 * rng.standard_normal(s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def forward(cfg):
  return jax.jit(
    lambda p, enc, dec, seg=None, dseg=None: T5(cfg).apply(
      {"params": p}, enc, dec, segment_ids=seg, decoder_segment_ids=dseg
    )
  )


def tokens(batch, length, seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(1, VOCAB, (batch, length)), jnp.int32)


ENC_MASK = jnp.array([[1] * 9, [1] * 6 + [0] * 3])


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_params_and_axes(name):
  cfg = CONFIGS[name]
  params = init(cfg)
  logits = forward(cfg)(params, tokens(2, 9), tokens(2, 5, seed=2))
  assert logits.shape == (2, 5, VOCAB)
  assert ("lm_head" in params) == (name == "v1_1")
  assert "relpos" in params["encoder"] and "relpos" not in params["encoder"]["layers_1"]["attn"]
  assert count_params_from_config(cfg)["total"] == count_params(params)
  variables = jax.eval_shape(
    T5(cfg).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32)
  )
  specs = nn.get_partition_spec(variables)["params"]
  vocab = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", None}
  for (path, spec), s in zip(
    jax.tree_util.tree_leaves_with_path(specs), jax.tree.leaves(nn.unbox(variables)["params"])
  ):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == s.ndim, path
    assert set(spec) <= vocab, (path, spec)


def test_encoder_padding_and_decoder_causality():
  cfg = CONFIGS["v1_0"]
  params = init(cfg)
  enc, dec = tokens(2, 9), tokens(2, 6, seed=2)
  ref = forward(cfg)(params, enc, dec, ENC_MASK)
  # Padding content never matters.
  other = enc.at[1, 6:].set(3)
  np.testing.assert_allclose(forward(cfg)(params, other, dec, ENC_MASK), ref, atol=1e-5)
  # Nor does dropping the padding altogether.
  alone = forward(cfg)(params, enc[1:, :6], dec[1:])
  np.testing.assert_allclose(alone[0], ref[1], atol=1e-5)
  # A later decoder token never changes earlier logits; any encoder token changes all.
  later = dec.at[:, 4].set((dec[:, 4] + 1) % VOCAB)
  out = forward(cfg)(params, enc, later, ENC_MASK)
  np.testing.assert_allclose(out[:, :4], ref[:, :4], atol=1e-6)
  assert not np.allclose(out[:, 4:], ref[:, 4:])
  first = enc.at[:, 0].set((enc[:, 0] + 1) % VOCAB)
  assert not np.allclose(forward(cfg)(params, first, dec, ENC_MASK)[:, 0], ref[:, 0])


def test_packed_examples_equal_separate_runs():
  cfg = CONFIGS["v1_1"]
  params = init(cfg)
  enc_a, enc_b = tokens(1, 5, seed=3), tokens(1, 4, seed=4)
  dec_a, dec_b = tokens(1, 3, seed=5), tokens(1, 4, seed=6)
  enc = jnp.concatenate([enc_a, enc_b, jnp.zeros((1, 2), jnp.int32)], 1)  # [1, 11]
  dec = jnp.concatenate([dec_a, dec_b], 1)  # [1, 7]
  eseg = jnp.array([[1] * 5 + [2] * 4 + [0] * 2])
  dseg = jnp.array([[1] * 3 + [2] * 4])
  packed = forward(cfg)(params, enc, dec, eseg, dseg)
  # Relative positions differ inside a packed row only by a constant shift of both
  # indices, which leaves k - q (and so the bias) unchanged.
  np.testing.assert_allclose(packed[:, :3], forward(cfg)(params, enc_a, dec_a), atol=1e-5)
  np.testing.assert_allclose(packed[:, 3:], forward(cfg)(params, enc_b, dec_b), atol=1e-5)


def test_jax_attention_impl_agrees():
  cfg = CONFIGS["v1_1"]
  params = init(cfg)
  enc, dec = tokens(2, 9), tokens(2, 6, seed=2)
  ref = forward(cfg)(params, enc, dec, ENC_MASK)
  out = forward(cfg.replace(attention_impl="jax"))(params, enc, dec, ENC_MASK)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_cached_decode_matches_full_forward():
  cfg = CONFIGS["v1_1"]
  params = init(cfg)
  enc, dec = tokens(2, 9), tokens(2, 8, seed=2)
  full = forward(cfg)(params, enc, dec, ENC_MASK)
  encoded = jax.jit(lambda p, e, m: T5(cfg).apply({"params": p}, e, m, method=T5.encode))(
    params, enc, ENC_MASK
  )
  stepper = T5(cfg.replace(decode=True))
  step = jax.jit(
    lambda v, e, ids, m: stepper.apply(
      v, e, ids, encoder_segment_ids=m, method=T5.decode, mutable=["cache"]
    )
  )
  cache = init_cache(cfg, 2)
  assert cache["decoder"]["layers_0"]["attn"]["cached_key"].shape == (
    2,
    cfg.max_len,
    cfg.num_heads,
    cfg.d_head,
  )
  logits, state = step({"params": params, "cache": cache}, encoded, dec[:, :3], ENC_MASK)
  np.testing.assert_allclose(logits, full[:, :3], atol=1e-5)
  for t in range(3, 8):
    logits, state = step({"params": params, **state}, encoded, dec[:, t : t + 1], ENC_MASK)
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)
  # A shorter cache sized by the caller works the same.
  short = init_cache(cfg, 2, cache_len=8)
  logits, _ = step({"params": params, "cache": short}, encoded, dec[:, :4], ENC_MASK)
  np.testing.assert_allclose(logits, full[:, :4], atol=1e-5)


def test_attention_bias_and_scale_kernels_agree():
  """plain vs jax vs blockwise kernel with a score bias, a custom scale and cross-attention masks."""
  rng = np.random.default_rng(0)
  q, k, v, bias = (
    jnp.asarray(rng.standard_normal(s), jnp.float32)
    for s in ((2, 5, 4, 8), (2, 7, 2, 8), (2, 7, 2, 8), (1, 4, 5, 7))
  )
  q_seg = jnp.ones((2, 5), jnp.int32)
  k_seg = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
  qi, ki = jnp.arange(5), jnp.arange(7)
  args = (q, k, v, qi, ki, q_seg, k_seg)
  ref, out, blockwise = jax.jit(
    lambda *a: [
      attend(*a, causal=False, impl=impl, block_size=4, bias=bias, scale=1.0)
      for impl in ("plain", "jax", "blockwise")
    ]
  )(*args)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(blockwise, ref, atol=1e-5)
  # Math: masked keys get no weight; the bias and scale enter as softmax(scale q.k + bias).
  qf = np.asarray(q)[1, :, :, None]  # [5, 4, 1, 8]
  kf = np.repeat(np.asarray(k)[1], 2, axis=1)[:4]  # keys 0..3 (not padding), [4, 4, 8]
  vf = np.repeat(np.asarray(v)[1], 2, axis=1)[:4]
  s = np.einsum("qhxd,khd->hqk", qf, kf) + np.asarray(bias)[0, :, :, :4]  # [4, 5, 4]
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(ref[1], np.einsum("hqk,khd->qhd", p, vf), atol=1e-5)


def test_bf16_and_remat():
  cfg = CONFIGS["v1_1"]
  params = init(cfg)
  enc, dec = tokens(2, 9), tokens(2, 6, seed=2)
  ref = forward(cfg)(params, enc, dec, ENC_MASK)
  out = forward(cfg.replace(dtype="bfloat16"))(params, enc, dec, ENC_MASK)
  assert out.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out, np.float32) - ref)  # bf16 rounding, amplified by random weights
  assert err.mean() < 0.1 * np.abs(ref).mean(), (err.mean(), np.abs(ref).mean())
  remat = forward(cfg.replace(remat="full"))(params, enc, dec, ENC_MASK)
  np.testing.assert_allclose(remat, ref, atol=1e-5)


def test_flops_formula():
  cfg = tiny(style="v1_0")
  c = count_params_from_config(cfg)
  n_x = 2 * 32 * 32 * 2
  fwd = (
    2 * c["encoder"] * 10
    + 2 * n_x * 10
    + 2 * (c["decoder"] - n_x) * 4
    + 4 * 2 * 100 * 32
    + 4 * 2 * 16 * 32
    + 4 * 2 * 40 * 32
    + 2 * 32 * VOCAB * 4
  )
  assert t5_flops_per_example(cfg, 10, 4, training=False) == fwd
  assert t5_flops_per_example(cfg, 10, 4) == 3 * fwd
  # t5-small (transformers reports 60,506,624 parameters with tied embeddings).
  small = T5Config(vocab_size=32128, num_layers=6, d_model=512, num_heads=8, d_ff=2048)
  assert count_params_from_config(small)["total"] == 60_506_624


@pytest.mark.parametrize(
  "kw, msg",
  [
    (dict(d_model=30, num_heads=4), "does not divide d_model"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(style="v2"), "style"),
    (dict(mlp="gated-relu"), "mlp"),
  ],
)
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    tiny(**kw)


def test_sharded_forward_matches_one_device():
  """data x fsdp x tensor = 2 x 2 x 2 fake devices: same logits as one device."""
  from llmrl.train import mesh as mesh_lib
  from tests.helpers import engine_config

  cfg = tiny(style="v1_1", vocab_size=40)
  c = engine_config(data=2, fsdp=2, tensor=2)
  mesh = mesh_lib.make_mesh(c.mesh)
  boxed = jax.eval_shape(
    T5(cfg).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32)
  )["params"]
  shardings = mesh_lib.logical_shardings(boxed, mesh)
  mesh_lib.check_divisible(nn.unbox(boxed), shardings)
  assert shardings["shared"]["embedding"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  params = init(cfg)
  enc, dec = tokens(4, 9), tokens(4, 6, seed=2)
  mask = jnp.concatenate([ENC_MASK, ENC_MASK])
  ref = forward(cfg)(params, enc, dec, mask)
  with mesh_lib.activate(mesh):
    sharded = jax.device_put(params, shardings)
    batch = mesh_lib.batch_sharding(mesh)
    out = jax.jit(forward(cfg))(sharded, *jax.device_put((enc, dec, mask), batch))
  np.testing.assert_allclose(out, ref, atol=1e-4)  # reassociated sums; logits are O(3)
