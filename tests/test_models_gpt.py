"""Tests of the decoder-only transformer (llmrl.models.gpt) on tiny shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl.models import (
  GPT,
  GPTConfig,
  count_params,
  count_params_from_config,
  flops_per_token,
  init_cache,
)
from llmrl.models.attention import attend, resolve_impl, use_cudnn
from llmrl.models.layers import gradient_barrier
from llmrl.train.step import compiler_options

VOCAB = 53


def tiny(**kw) -> GPTConfig:
  base = dict(vocab_size=VOCAB, max_len=32, num_layers=2, d_model=32, num_heads=4, d_ff=64)
  base.update(kw)
  return GPTConfig(**base)


@functools.lru_cache(maxsize=None)
def init(cfg, seed=0):
  """Random params shaped like GPT(cfg)'s (numpy fill: avoids compiling init)."""
  ids = jnp.zeros((1, 4), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(GPT(cfg).init, {"params": jax.random.key(0)}, ids))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.1 * rng.standard_normal(s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def forward(cfg):
  """jit(params, ids, positions, segment_ids) -> logits, cached per config."""
  return jax.jit(
    lambda p, ids, pos=None, seg=None: GPT(cfg).apply(
      {"params": p}, ids, positions=pos, segment_ids=seg
    )
  )


def tokens(batch, length, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


CONFIGS = {
  "gpt2": tiny(style="gpt2"),
  "llama_gqa": tiny(style="llama", num_kv_heads=2, tie_embeddings=False),
  "llama_mqa": tiny(style="llama", num_kv_heads=1, head_dim=6),
  "mixed": tiny(
    style="gpt2", norm="rmsnorm", mlp="geglu", position_embedding="rope", use_bias=False
  ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_and_hidden(name):
  cfg = CONFIGS[name]
  params = init(cfg)
  ids = tokens(3, 7)

  @jax.jit
  def run(variables, ids):
    model = GPT(cfg)
    return (
      model.apply(variables, ids),
      model.apply(variables, ids, return_hidden=True),
      model.apply(variables, ids, method=GPT.hidden_states),
    )

  logits, (logits2, hidden), hidden2 = run({"params": params}, ids)
  assert logits.shape == (3, 7, VOCAB)
  assert hidden.shape == (3, 7, cfg.d_model)
  np.testing.assert_allclose(logits, logits2)
  np.testing.assert_allclose(hidden, hidden2)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_causal(name):
  cfg = CONFIGS[name]
  params = init(cfg)
  ids = tokens(2, 10)
  changed = ids.at[:, 6].set((ids[:, 6] + 1) % VOCAB)
  a = forward(cfg)(params, ids)
  b = forward(cfg)(params, changed)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert not np.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize(
  "name, impl", [("gpt2", "plain"), ("llama_gqa", "blockwise"), ("llama_gqa", "jax")]
)
def test_packed_segments_equal_separate_runs(name, impl):
  cfg = CONFIGS[name].replace(attention_impl=impl, attention_block_size=4)
  params = init(cfg)
  lengths = (5, 3, 4)  # packed into one row of 14 with 2 padding tokens
  seqs = [tokens(1, n, seed=10 + i) for i, n in enumerate(lengths)]
  packed = jnp.concatenate(seqs + [jnp.zeros((1, 2), jnp.int32)], axis=1)  # [1, 14]
  segment_ids = jnp.array([[1] * 5 + [2] * 3 + [3] * 4 + [0] * 2])
  positions = jnp.array([list(range(5)) + list(range(3)) + list(range(4)) + [0, 1]])
  out = forward(cfg)(params, packed, positions, segment_ids)
  # Reference: each sequence in its own row, right-padded (causal: padding never affects it).
  rows = jnp.concatenate([jnp.pad(s, ((0, 0), (0, 5 - s.shape[1]))) for s in seqs])  # [3, 5]
  alone = forward(cfg.replace(attention_impl="plain"))(params, rows)
  start = 0
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(out[0, start : start + n], alone[i, :n], atol=1e-5)
    start += n


def _qkv(b, lq, lk, h, kvh, d, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (
    jax.random.normal(kq, (b, lq, h, d)),
    jax.random.normal(kk, (b, lk, kvh, d)),
    jax.random.normal(kv, (b, lk, kvh, d)),
  )


@pytest.mark.parametrize(
  "heads, kv_heads, with_segments", [(4, 4, False), (4, 2, True), (4, 1, True)]
)
def test_attention_kernels_agree(heads, kv_heads, with_segments):
  """plain vs blockwise vs jax kernels: outputs and gradients (fp32, atol 1e-5)."""
  q, k, v = _qkv(2, 11, 11, heads, kv_heads, 8)
  idx = jnp.arange(11)
  segs = jnp.array([[1] * 4 + [2] * 7, [1] * 9 + [0] * 2]) if with_segments else None

  def run(impl):
    def f(q, k, v):
      out = attend(q, k, v, idx, idx, segs, segs, causal=True, impl=impl, block_size=4)
      return jnp.sum(jnp.sin(out)), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads

  ref_out, ref_grads = run("plain")
  for impl in ("blockwise", "jax"):
    out, grads = run(impl)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    for g, ref in zip(grads, ref_grads):
      np.testing.assert_allclose(g, ref, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_kernels_agree_with_offset_queries(causal):
  """Decode-shaped attention: 3 queries at absolute indices 5..7 over a 16-slot cache."""
  q, k, v = _qkv(2, 3, 16, 4, 2, 8, seed=1)
  q_idx, k_idx = 5 + jnp.arange(3), jnp.arange(16)
  q_seg = jnp.array([[1, 1, 1], [2, 2, 2]])
  k_seg = jnp.array([[1] * 8 + [0] * 8, [0] * 2 + [2] * 14])

  @jax.jit
  def run(q, k, v):
    return [
      attend(q, k, v, q_idx, k_idx, q_seg, k_seg, causal=causal, impl=impl, block_size=5)
      for impl in ("plain", "blockwise", "jax")
    ]

  ref, *others = run(q, k, v)
  for out in others:
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama_mqa"])
def test_model_impls_agree(name):
  cfg = CONFIGS[name]
  params = init(cfg)
  ids = tokens(2, 11)
  segs = jnp.array([[1] * 4 + [2] * 7, [1] * 9 + [0] * 2])
  ref = forward(cfg)(params, ids, None, segs)
  for impl in ("blockwise", "jax"):
    out = forward(cfg.replace(attention_impl=impl, attention_block_size=4))(params, ids, None, segs)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(
  "impl, platform, want",
  [("auto", "gpu", "jax"), ("auto", "cpu", "plain"), ("auto", "tpu", "plain"),
   ("blockwise", "gpu", "blockwise"), ("plain", "gpu", "plain"), ("jax", "cpu", "jax")],
)
def test_auto_attention_resolves_per_platform(impl, platform, want):
  assert resolve_impl(impl, platform) == want


def test_auto_attention_is_plain_on_cpu():
  q, k, v = _qkv(2, 11, 11, 4, 2, 8)
  idx = jnp.arange(11)
  segs = jnp.array([[1] * 4 + [2] * 7, [1] * 9 + [0] * 2])
  out = {impl: attend(q, k, v, idx, idx, segs, segs, causal=True, impl=impl, block_size=4)
         for impl in ("auto", "plain", "blockwise")}
  np.testing.assert_array_equal(out["auto"], out["plain"])
  assert not np.array_equal(out["auto"], out["blockwise"])  # a different kernel's rounding
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    attend(q, k, v, idx, idx, segs, segs, causal=True, impl="flash", block_size=4)


@pytest.mark.parametrize(
  "platform, dtype, lq, lk, d, bias, masked, want",
  [
    ("gpu", jnp.bfloat16, 64, 64, 64, False, False, True),  # training / prefill
    ("gpu", jnp.float16, 64, 64, 128, False, True, True),  # packed or padded rows
    ("gpu", jnp.bfloat16, 63, 63, 72, False, False, True),  # odd length, pure causal
    ("gpu", jnp.bfloat16, 63, 63, 64, False, True, False),  # odd length with a mask
    ("cpu", jnp.bfloat16, 64, 64, 64, False, False, False),  # cuDNN is GPU only
    ("tpu", jnp.bfloat16, 64, 64, 64, False, False, False),
    ("gpu", jnp.float32, 64, 64, 64, False, False, False),  # cuDNN flash takes 16-bit inputs
    ("gpu", jnp.bfloat16, 1, 64, 64, False, True, False),  # a decode step against the cache
    ("gpu", jnp.bfloat16, 64, 64, 60, False, False, False),  # head_dim not a multiple of 8
    ("gpu", jnp.bfloat16, 64, 64, 136, False, False, False),  # head_dim over 128
    ("gpu", jnp.bfloat16, 64, 64, 64, True, False, False),  # T5's relative bias
  ],
)
def test_jax_kernel_asks_for_cudnn_only_where_it_applies(
  platform, dtype, lq, lk, d, bias, masked, want
):
  q = jnp.zeros((2, lq, 4, d), dtype)
  k = jnp.zeros((2, lk, 2, d), dtype)
  b = jnp.zeros((1, 4, lq, lk)) if bias else None
  assert use_cudnn(q, k, b, platform, masked) is want


@pytest.mark.parametrize(
  "name, impl",
  [("gpt2", "plain"), ("llama_gqa", "plain"), ("llama_gqa", "blockwise"), ("llama_mqa", "jax")],
)
def test_kv_cache_matches_full_forward(name, impl):
  cfg = CONFIGS[name].replace(attention_impl=impl, attention_block_size=4)
  params = init(cfg)
  ids = tokens(2, 12)
  full = forward(cfg)(params, ids)
  decoder = GPT(cfg.replace(decode=True))
  step = jax.jit(lambda v, ids: decoder.apply(v, ids, mutable=["cache"]))
  cache = init_cache(cfg, batch_size=2)
  assert cache["layers_0"]["attn"]["cached_key"].shape == (2, cfg.max_len, cfg.kv_heads, cfg.d_head)
  # Prefill a 5-token prompt chunk, then decode one token at a time.
  logits, state = step({"params": params, "cache": cache}, ids[:, :5])
  np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
  for t in range(5, 12):
    logits, state = step({"params": params, **state}, ids[:, t : t + 1])
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_kv_cache_left_padded_prompts():
  cfg = CONFIGS["llama_gqa"]
  params = init(cfg)
  ids = tokens(2, 9)
  mask = jnp.array([[1] * 9, [0] * 3 + [1] * 6])  # row 1 is left-padded by 3
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  full = forward(cfg)(params, ids, positions, mask)
  decoder = GPT(cfg.replace(decode=True))
  step = jax.jit(
    lambda v, ids, pos, seg: decoder.apply(
      v, ids, positions=pos, segment_ids=seg, mutable=["cache"]
    )
  )
  state = {"cache": init_cache(cfg, 2)}
  _, state = step({"params": params, **state}, ids[:, :6], positions[:, :6], mask[:, :6])
  for t in range(6, 9):
    sl = slice(t, t + 1)
    logits, state = step({"params": params, **state}, ids[:, sl], positions[:, sl], mask[:, sl])
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_bf16_compute_with_fp32_params():
  cfg = CONFIGS["llama_gqa"]
  params = init(cfg)
  bf16 = cfg.replace(dtype="bfloat16")
  bf_params = init(bf16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf_params))
  ids = tokens(2, 9)
  logits = forward(bf16)(params, ids)
  assert logits.dtype == jnp.bfloat16
  ref = forward(cfg)(params, ids)
  np.testing.assert_allclose(logits.astype(jnp.float32), ref, atol=5e-2)
  for impl in ("blockwise", "jax"):
    out = forward(bf16.replace(attention_impl=impl))(params, ids)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=5e-2)


def test_remat_same_loss_and_grad():
  ids = tokens(2, 10)
  results = {}
  for remat in ("none", "full", "dots"):
    cfg = CONFIGS["llama_gqa"].replace(remat=remat, dropout_rate=0.1, num_layers=1)
    params = init(cfg)

    def loss(p, cfg=cfg):
      logits = GPT(cfg).apply(
        {"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(3)}
      )
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 1])

    results[remat] = jax.jit(jax.value_and_grad(loss))(params)
  for remat in ("full", "dots"):
    np.testing.assert_allclose(results[remat][0], results["none"][0], rtol=1e-6)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
      results[remat][1],
      results["none"][1],
    )


def test_gradient_barrier_keeps_values_and_grads_and_survives_cpu_compile():
  """The residual-stream barrier is the identity (values and gradients equal
  a model without it, checked against an unbarriered copy of the maths), and
  with the train step's CPU compiler options the barrier reaches the
  compiled program (without them XLA drops it, so it could not stop fusion)."""
  f = lambda x: jnp.sum(jnp.tanh(x) ** 2 * jnp.arange(x.size).reshape(x.shape))  # noqa: E731
  x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
  np.testing.assert_allclose(gradient_barrier(x), x)
  np.testing.assert_allclose(jax.grad(lambda x: f(gradient_barrier(x)))(x), jax.grad(f)(x),
                             rtol=1e-6)
  cfg = CONFIGS["gpt2"]
  ids = tokens(2, 8)
  loss = lambda p: jnp.mean(GPT(cfg).apply({"params": p}, ids) ** 2)  # noqa: E731
  kept = jax.jit(jax.grad(loss), compiler_options=compiler_options("cpu"))
  dropped = jax.jit(jax.grad(loss))
  assert "opt-barrier" in kept.lower(init(cfg)).compile().as_text()
  assert "opt-barrier" not in dropped.lower(init(cfg)).compile().as_text()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               kept(init(cfg)), dropped(init(cfg)))


def test_dropout_is_used_when_not_deterministic():
  cfg = CONFIGS["gpt2"].replace(dropout_rate=0.5)
  params = init(cfg)
  ids = tokens(1, 6)
  apply = jax.jit(GPT(cfg).apply, static_argnames="deterministic")
  a = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(0)})
  b = apply({"params": params}, ids)
  assert not np.allclose(a, b)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_param_has_logical_axes(name):
  cfg = CONFIGS[name]
  variables = jax.eval_shape(
    GPT(cfg).init, {"params": jax.random.key(0)}, jnp.zeros((1, 4), jnp.int32)
  )
  specs = nn.get_partition_spec(variables)["params"]
  shapes = nn.unbox(variables)["params"]
  vocab = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", None}
  for (path, spec), shape in zip(
    jax.tree_util.tree_leaves_with_path(specs), jax.tree.leaves(shapes)
  ):
    assert isinstance(spec, jax.sharding.PartitionSpec), path
    assert len(spec) == shape.ndim, path
    assert set(spec) <= vocab, (path, spec)
  flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs)}
  assert flat["['layers_0']['attn']['query']['kernel']"] == jax.sharding.PartitionSpec(
    "embed", "heads", "head_dim"
  )
  assert flat["['embed']['embedding']"] == jax.sharding.PartitionSpec("vocab", "embed")


@pytest.mark.parametrize("name", CONFIGS)
def test_param_count_matches_tree(name):
  cfg = CONFIGS[name]
  counts = count_params_from_config(cfg)
  assert counts["total"] == count_params(init(cfg))
  assert counts["non_embedding"] == (
    counts["total"] - counts["token_embedding"] - counts["position_embedding"] - counts["lm_head"]
  )


def test_flops_per_token_formula():
  cfg = tiny(style="gpt2", num_layers=3)
  n = count_params_from_config(cfg)["non_embedding"]
  expected = 6 * n + 12 * 3 * 16 * 32 + 6 * 32 * VOCAB
  assert flops_per_token(cfg, seq_len=16) == expected
  assert flops_per_token(cfg, seq_len=16, training=False) == expected / 3
  # GPT-2 small: 124,439,808 in all (as HF reports); N = 12 * (12 * 768^2 + 9,984 biases and
  # norm params) + 1,536 final norm = 85,056,000.
  gpt2_small = GPTConfig(
    vocab_size=50257, max_len=1024, num_layers=12, d_model=768, num_heads=12, d_ff=3072
  )
  counts = count_params_from_config(gpt2_small)
  assert counts["total"] == 124_439_808
  assert counts["non_embedding"] == 85_056_000


@pytest.mark.parametrize(
  "kw, msg",
  [
    (dict(d_model=30, num_heads=4), "does not divide d_model"),
    (dict(num_kv_heads=3), "does not divide num_heads"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(style="bert"), "style"),
    (dict(remat="some"), "remat"),
  ],
)
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    tiny(**kw)
