"""Tests of the BERT encoder (llmrl.models.bert) on tiny shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl.models import Bert, BertConfig, count_params, count_params_from_config, flops_per_token

VOCAB = 41


def tiny(**kw) -> BertConfig:
  base = dict(vocab_size=VOCAB, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=48)
  return BertConfig(**{**base, **kw})


CFG = tiny(num_labels=3)


@functools.lru_cache(maxsize=None)
def init(cfg, seed=0):
  """Random params shaped like Bert(cfg)'s (numpy fill: avoids compiling init)."""
  shapes = nn.unbox(
    jax.eval_shape(Bert(cfg).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
  )["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.2 * rng.standard_normal(s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def encode(cfg):
  return jax.jit(
    lambda p, ids, seg=None, pos=None, types=None: Bert(cfg).apply(
      {"params": p}, ids, types, seg, pos, method=Bert.encode
    )
  )


def tokens(batch, length, seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(5, VOCAB, (batch, length)), jnp.int32)


def test_heads_shapes_params_and_axes():
  params = init(CFG)
  ids = tokens(2, 7)

  @jax.jit
  def run(p, ids):
    m, v = Bert(CFG), {"params": p}
    return (
      m.apply(v, ids),
      m.apply(v, ids, method=Bert.pretrain),
      m.apply(v, ids, method=Bert.pooled),
      m.apply(v, ids, method=Bert.classify),
    )

  mlm, (mlm2, nsp), pooled, labels = run(params, ids)
  assert mlm.shape == (2, 7, VOCAB) and nsp.shape == (2, 2)
  assert pooled.shape == (2, 32) and labels.shape == (2, 3)
  np.testing.assert_allclose(mlm, mlm2)
  assert np.abs(pooled).max() <= 1.0  # tanh
  assert count_params_from_config(CFG)["total"] == count_params(params)
  variables = jax.eval_shape(Bert(CFG).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
  specs = nn.get_partition_spec(variables)["params"]
  vocab = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", None}
  for (path, spec), s in zip(
    jax.tree_util.tree_leaves_with_path(specs), jax.tree.leaves(nn.unbox(variables)["params"])
  ):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == s.ndim, path
    assert set(spec) <= vocab, (path, spec)
  # A config without heads returns hidden states from __call__ and has no head params.
  bare = tiny(mlm_head=False, nsp_head=False, pooler=False)
  bare_params = init(bare)
  assert set(bare_params) == {
    "embed",
    "pos_embed",
    "type_embed",
    "embed_norm",
    "layers_0",
    "layers_1",
  }
  hidden = jax.jit(lambda p, ids: Bert(bare).apply({"params": p}, ids))(bare_params, ids)
  assert hidden.shape == (2, 7, 32)


def test_bidirectional_and_padding_invariant():
  params = init(CFG)
  ids = tokens(2, 9)
  mask = jnp.array([[1] * 9, [1] * 6 + [0] * 3])
  ref = encode(CFG)(params, ids, mask)
  # The last token changes the first position's output: attention is bidirectional.
  last = ids.at[:, 5].set((ids[:, 5] + 1) % VOCAB)
  assert not np.allclose(encode(CFG)(params, last, mask)[:, 0], ref[:, 0])
  # Padding content never matters, and a padded row equals the row without padding.
  other = ids.at[1, 6:].set(7)
  np.testing.assert_allclose(encode(CFG)(params, other, mask)[1, :6], ref[1, :6], atol=1e-5)
  np.testing.assert_allclose(encode(CFG)(params, ids[1:, :6])[0], ref[1, :6], atol=1e-5)


@pytest.mark.parametrize("impl", ["blockwise", "jax"])
def test_packed_segments_and_impls_agree(impl):
  cfg = CFG.replace(attention_impl=impl, attention_block_size=4)
  params = init(CFG)
  a, b = tokens(1, 5, seed=2), tokens(1, 4, seed=3)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], 1)  # [1, 11]
  seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 2])
  pos = jnp.array([list(range(5)) + list(range(4)) + [0, 0]])
  out = encode(cfg)(params, packed, seg, pos)
  np.testing.assert_allclose(out[0, :5], encode(CFG)(params, a)[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:9], encode(CFG)(params, b)[0], atol=1e-5)


def test_token_types_and_dropout():
  params = init(CFG)
  ids = tokens(1, 6)
  types = jnp.array([[0, 0, 0, 1, 1, 1]])
  f = encode(CFG)
  assert not np.allclose(f(params, ids, None, None, types), f(params, ids))
  drop = CFG.replace(dropout_rate=0.5)
  apply = jax.jit(Bert(drop).apply, static_argnames="deterministic")
  a = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert not np.allclose(a, apply({"params": params}, ids))


def test_param_count_and_flops():
  # bert-base-uncased as BertForPreTraining: transformers reports 110,106,428 parameters
  # (109,482,240 for BertModel).
  base = BertConfig(vocab_size=30522, max_len=512, num_layers=12, d_model=768, num_heads=12,
                    d_ff=3072)  # fmt: skip
  assert count_params_from_config(base)["total"] == 110_106_428
  assert count_params_from_config(base.replace(mlm_head=False, nsp_head=False))["total"] == (
    109_482_240
  )
  cfg = tiny()
  blocks = 2 * (4 * 32 * 32 + 4 * 32 + 2 * 32 * 48 + 48 + 32 + 4 * 32)
  fwd = 2 * blocks + 4 * 2 * 16 * 32 + 2 * (32 * 32 + 32 * VOCAB)
  assert flops_per_token(cfg, 16, training=False) == fwd
  assert flops_per_token(cfg, 16) == 3 * fwd


@pytest.mark.parametrize(
  "kw, msg",
  [
    (dict(d_model=30, num_heads=4), "does not divide d_model"),
    (dict(activation="swiglu"), "activation"),
    (dict(pooler=False), "need the pooler"),
    (dict(attention_impl="flash"), "attention_impl"),
  ],
)
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    tiny(**kw)


def test_logical_shardings_fit_a_mesh():
  from llmrl.train import mesh as mesh_lib
  from tests.helpers import engine_config

  mesh = mesh_lib.make_mesh(engine_config(data=2, fsdp=2, tensor=2).mesh)
  cfg = tiny(vocab_size=42, num_labels=2)
  boxed = jax.eval_shape(Bert(cfg).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
  shardings = mesh_lib.logical_shardings(boxed, mesh)
  mesh_lib.check_divisible(nn.unbox(boxed), shardings)
  P = jax.sharding.PartitionSpec
  assert shardings["layers_0"]["attn"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
  assert shardings["mlm"]["bias"].spec == P("tensor")
