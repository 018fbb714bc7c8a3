"""The HLO matmul inventory, and the FLOP accounting checked against compiled programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl.models import (
  GPT,
  T5,
  Bert,
  BertConfig,
  GPTConfig,
  T5Config,
  count_params_from_config,
  flops_per_token,
  t5_flops_per_example,
)
from llmrl.models.hlo_matmuls import Matmul, compiled_matmuls
from llmrl.train.step import compiler_options

VOCAB = 37


def compiled_text(fn, *args) -> str:
  """Optimised HLO of `fn` jitted on CPU with the train step's compiler options."""
  return jax.jit(fn, compiler_options=compiler_options("cpu")).lower(*args).compile().as_text()


def test_batched_dot_with_two_contracting_dims():
  x = jnp.ones((3, 5, 7, 4))  # batch, m, k1, k2
  y = jnp.ones((3, 4, 7, 6))  # batch, k2, k1, n
  dims = (((2, 3), (2, 1)), ((0,), (0,)))
  text = compiled_text(lambda a, b: jax.lax.dot_general(a, b, dims), x, y)
  (mm,) = compiled_matmuls(text)
  assert (mm.batch, mm.m, mm.k, mm.n, mm.dtype) == (3, 5, 28, 6, "f32")
  assert mm.flops == 2 * 3 * 5 * 28 * 6


def test_two_matmuls_and_their_op_names():
  x, w1, w2 = jnp.ones((16, 8), jnp.bfloat16), jnp.ones((8, 24), jnp.bfloat16), jnp.ones((24, 8))

  def f(x, w1, w2):
    h = jnp.dot(x, w1, preferred_element_type=jnp.float32)
    return jnp.tanh(h) @ w2

  mms = compiled_matmuls(compiled_text(f, x, w1, w2))
  assert sorted((m.m, m.k, m.n, m.dtype) for m in mms) == [(16, 8, 24, "bf16"), (16, 24, 8, "f32")]
  assert all("dot" in m.op_name for m in mms)


def test_no_dots_and_an_unresolved_operand():
  assert compiled_matmuls(compiled_text(lambda a: jnp.sin(a) * 2, jnp.ones(4))) == []
  bad = "  ROOT %dot.1 = f32[2,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}"
  with pytest.raises(ValueError, match="dot.1"):
    compiled_matmuls(bad)


def _not_matmul(params, under=None) -> int:
  """Parameters that are not matmul kernels (biases, norms, bias tables), under `under`."""
  n = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-1] != "kernel" and (under is None or under(keys)):
      n += leaf.size
  return n


def _grad_dot_flops(model, params, *inputs) -> int:
  """Matmul FLOPs of one gradient of a loss that needs every logit (a log-partition sum)."""

  def loss(p, *xs):
    return jax.nn.logsumexp(model.apply({"params": p}, *xs), axis=-1).sum()

  return sum(m.flops for m in compiled_matmuls(compiled_text(jax.grad(loss), params, *inputs)))


@pytest.mark.parametrize(
  "kw",
  [
    dict(style="gpt2"),
    dict(style="llama", num_kv_heads=2),
    dict(style="gpt2", tie_embeddings=False),
  ],
  ids=["gpt2", "llama-gqa", "untied"],
)
def test_gpt_flops_match_the_compiled_training_step(kw):
  cfg = GPTConfig(vocab_size=VOCAB, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=64, **kw)
  batch, seq = 2, 16
  ids = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (batch, seq)))
  model = GPT(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
  counts = count_params_from_config(cfg)
  in_n = counts["non_embedding"]  # the N of flops_per_token: every non-embedding parameter
  assert in_n == sum(x.size for x in jax.tree.leaves(params)) - counts["token_embedding"] - (
    counts["position_embedding"] + counts["lm_head"]
  )
  tokens = batch * seq
  expected = flops_per_token(cfg, seq) * tokens - 6 * tokens * _not_matmul(
    params, lambda k: k[0] not in ("embed", "pos_embed", "lm_head")
  )
  assert _grad_dot_flops(model, params, ids) == expected


def test_bert_flops_match_the_compiled_training_step():
  cfg = BertConfig(vocab_size=VOCAB, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=48)
  batch, seq = 2, 16
  ids = jnp.asarray(np.random.RandomState(1).randint(0, VOCAB, (batch, seq)))
  model = Bert(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
  tokens = batch * seq
  # N_blocks counts the blocks' biases and norms; the MLM head term counts only its matmuls.
  expected = flops_per_token(cfg, seq) * tokens - 6 * tokens * _not_matmul(
    params, lambda k: k[0].startswith("layers_")
  )
  assert _grad_dot_flops(model, params, ids) == expected


@pytest.mark.parametrize("style", ["v1_0", "v1_1"])
def test_t5_flops_match_the_compiled_training_step(style):
  cfg = T5Config(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=48, max_len=16,
                 style=style)  # fmt: skip
  batch, enc, dec = 2, 12, 6
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randint(0, VOCAB, (batch, enc)))
  y = jnp.asarray(rng.randint(0, VOCAB, (batch, dec)))
  model = T5(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), x, y)["params"])
  # N_enc / N_dec count norms and relative-position tables, which run no matmul.
  extra = enc * _not_matmul(params, lambda k: k[0] == "encoder") + dec * _not_matmul(
    params, lambda k: k[0] == "decoder"
  )
  expected = t5_flops_per_example(cfg, enc, dec) * batch - 6 * batch * extra
  assert _grad_dot_flops(model, params, x, y) == expected


def test_matmul_shape_key():
  mm = Matmul(batch=2, m=3, k=4, n=5, dtype="bf16", op_name="")
  assert mm.shape == (2, 3, 4, 5, "bf16") and mm.flops == 240
