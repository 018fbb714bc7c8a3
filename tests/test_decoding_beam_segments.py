"""Beam search with a cache that grows in segments equals the one-loop search.

The segments only shorten the cache that early steps attend over; tokens,
per-token log-probs and scores must not change (GPT-2 and Llama/GQA, a soft
prompt's prefix in the cache, left padding).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl import decoding
from llmrl.adapters import prompt as prompt_lib
from llmrl.decoding.adapters import CachedDecoder
from llmrl.decoding.beam import segment_lengths
from llmrl.models import GPT, GPTConfig

V, NEW = 64, 70
PROMPTS = [[5, 6, 7, 8, 9], [30, 31]]  # left padding on row 1


class OneLoop:
  """The same decoder without the resize hook: beam search keeps one loop."""

  def __init__(self, inner):
    self.inner = inner

  def __getattr__(self, name):
    if name in ("resize_beam_cache", "beam_prompt_slots") or name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.inner, name)


def _model(style):
  cfg = GPTConfig(vocab_size=V, max_len=96, num_layers=2, d_model=32, num_heads=4,
                  num_kv_heads=2 if style == "llama" else None, d_ff=64, style=style)
  model = GPT(cfg)
  params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)},
                                    jnp.zeros((1, 8), jnp.int32)))["params"]
  # Larger weights than the initialiser's: peaked distributions, no near-ties.
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, params)
  return model, params


def test_segment_lengths():
  assert segment_lengths(16, 128) == [48, 80, 112, 143]
  assert segment_lengths(5, NEW) == [40, 74]
  assert segment_lengths(7, 20) == [26]  # short runs: one segment
  for p, t in [(1, 2), (3, 31), (9, 64), (16, 127), (4, 400)]:
    ends = segment_lengths(p, t)
    assert 1 <= len(ends) <= 4 and ends == sorted(ends)
    assert ends[-1] == p + t - 1  # the last step writes slot p + t - 2
    assert ends[0] > p


def test_resize_cuts_and_pads_with_invisible_slots():
  beams, length, d = 2, 3, 4
  layer = {
    "cached_key": jnp.arange(2 * 1 * d * length * beams, dtype=jnp.float32).reshape(
      2, 1, d, length * beams),
    "cached_value": jnp.ones((2, 1, length * beams, d)),
    "cached_segment": jnp.ones((2 * beams, length), jnp.int32),
    "cached_parent": jnp.ones((2 * beams, length), jnp.int32),
    "cache_index": jnp.int32(2),
  }
  state = {"cache": {"layers_0": layer}, "position": jnp.zeros(4, jnp.int32)}
  dec = CachedDecoder(None)
  grown = dec.resize_beam_cache(state, 5)["cache"]["layers_0"]
  assert grown["cached_key"].shape == (2, 1, d, 10)
  assert grown["cached_value"].shape == (2, 1, 10, d)
  np.testing.assert_array_equal(grown["cached_key"][..., :6], layer["cached_key"])
  assert float(jnp.abs(grown["cached_key"][..., 6:]).max()) == 0.0
  np.testing.assert_array_equal(grown["cached_segment"][:, 3:], 0)  # padding: never visible
  cut = dec.resize_beam_cache(state, 2)["cache"]["layers_0"]
  np.testing.assert_array_equal(cut["cached_key"], layer["cached_key"][..., :4])
  np.testing.assert_array_equal(cut["cached_parent"], layer["cached_parent"][:, :2])
  assert cut["cache_index"] is layer["cache_index"]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_segmented_beam_search_equals_one_loop(style):
  model, params = _model(style)
  kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, method="beam", num_beams=3,
            num_return_sequences=2, eos_id=1, pad_id=0)
  got = decoding.generate(CachedDecoder(model), params, PROMPTS, **kw)
  want = decoding.generate(OneLoop(CachedDecoder(model)), params, PROMPTS, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
  np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def test_segmented_beam_search_with_a_soft_prompt_prefix():
  model, params = _model("gpt2")
  prompt = prompt_lib.SoftPrompt(3, (20, 21))
  soft = prompt.init(params["embed"]["embedding"], np.array([7, 9, 11], np.int32))
  both = {"base": params, "soft": soft}
  kw = dict(max_new_tokens=NEW, method="beam", num_beams=2, eos_id=None, pad_id=0)
  got = decoding.generate(prompt.decoder(model), both, PROMPTS, **kw)
  want = decoding.generate(OneLoop(prompt.decoder(model)), both, PROMPTS, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
  prefixed = decoding.generate(model, params, [[7, 9, 11, 20, 21] + p for p in PROMPTS], **kw)
  np.testing.assert_array_equal(got.tokens, prefixed.tokens)
