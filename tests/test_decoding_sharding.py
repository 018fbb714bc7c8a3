"""Decoding on a sharded mesh (8 fake CPU devices) gives the single-device results."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from llmrl import decoding
from llmrl.models import GPT, GPTConfig
from llmrl.train import mesh as mesh_lib

PROMPTS = [
  [5, 9, 14, 3, 22, 7],
  [31, 2],
  [44, 17, 8, 50],
  [6],
  [9, 9, 9],
  [1, 2, 3, 4],
  [60, 61],
  [7],
]


def _mesh(data, fsdp, tensor):
  c = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, expert=1))
  return mesh_lib.make_mesh(c)


@pytest.mark.parametrize(
  "method,axes",
  [("greedy", (8, 1, 1)), ("beam", (2, 2, 2))],  # (data, fsdp, tensor): pure DP; DP x FSDP x TP
)
def test_sharded_equals_single_device(method, axes):
  assert jax.device_count() == 8
  cfg = GPTConfig(
    vocab_size=64,
    max_len=24,
    num_layers=2,
    d_model=32,
    num_heads=4,
    d_ff=64,
    style="llama",
    num_kv_heads=2,
    init_std=0.3,
  )
  model = GPT(cfg)
  boxed = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 4), jnp.int32))["params"]
  params = nn.unbox(boxed)
  kw = dict(max_new_tokens=10, method=method, eos_id=3, pad_id=0)
  if method == "beam":
    kw.update(num_beams=4, num_return_sequences=2)
  single = decoding.generate(model, params, PROMPTS, **kw)

  mesh = _mesh(*axes)
  sharded = jax.device_put(params, mesh_lib.logical_shardings(boxed, mesh))
  split = not sharded["embed"]["embedding"].sharding.is_fully_replicated
  assert split == (axes != (8, 1, 1))  # FSDP/TP: params really split
  with mesh_lib.activate(mesh):
    out = decoding.generate(model, sharded, PROMPTS, **kw)
  np.testing.assert_array_equal(out.tokens, single.tokens)
  np.testing.assert_array_equal(out.lengths, single.lengths)
  np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-5)
  if method == "beam":
    np.testing.assert_allclose(out.scores, single.scores, atol=1e-5)
