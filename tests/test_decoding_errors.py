"""Bad decoding input fails before compiling, with a ValueError naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl import decoding
from llmrl.models import GPT, GPTConfig


@pytest.fixture(scope="module")
def model_params():
  model = GPT(GPTConfig(vocab_size=32, max_len=16, num_layers=1, d_model=16, num_heads=2, d_ff=32))
  ids = jnp.zeros((1, 2), jnp.int32)
  return model, nn.unbox(model.init({"params": jax.random.key(0)}, ids))["params"]


BAD = [
  (
    dict(prompts=[list(range(1, 13))], max_new_tokens=5),
    r"prompts: .*12 tokens.*max_new_tokens=5.*max_len=16",
  ),
  (dict(prompts=[[1, 2]], max_new_tokens=0), r"max_new_tokens=0 must be >= 1"),
  (dict(min_new_tokens=9), r"min_new_tokens=9 must be in \[0, 8\]"),
  (dict(method="sample", top_p=0.0, rng=jax.random.key(0)), r"top_p=0.0 must be in \(0, 1\]"),
  (dict(method="sample", top_p=1.5, rng=jax.random.key(0)), r"top_p=1.5 must be in \(0, 1\]"),
  (dict(method="sample", temperature=0.0, rng=jax.random.key(0)), r"temperature=0.0 must be > 0"),
  (dict(method="sample", temperature=-1.0, rng=jax.random.key(0)), r"temperature=-1.0 must be > 0"),
  (dict(method="sample"), r"rng is required"),
  (dict(method="beam", num_beams=0), r"num_beams=0 must be >= 1"),
  (
    dict(method="beam", num_beams=2, num_return_sequences=3),
    r"num_return_sequences=3 must be <= num_beams=2",
  ),
  (dict(num_beams=4), r"num_beams=4 needs method='beam'"),
  (dict(num_return_sequences=2), r"num_return_sequences=2 needs method"),
  (dict(method="beams"), r"method='beams' is not one of"),
  (dict(top_k=-1), r"top_k=-1 must be >= 0"),
  (dict(early_stopping="sometimes", method="beam"), r"early_stopping='sometimes'"),
  (dict(prompts=[[1, 2], []]), r"prompts\[1\] is empty"),
  (dict(prompts=[]), r"prompts is empty"),
  (dict(prompts=np.zeros((2, 3), np.int32)), r"prompts\[0\] is empty"),  # all padding
  (dict(prompts=[[1, 99]]), r"prompts\[0\] has token ids outside \[0, 32\)"),
  (dict(prompts="hello"), r"prompts must be a list of token-id lists"),
  (dict(eos_id=40), r"eos_id=40 must be in \[0, 31\]"),
  (dict(pad_id=-1), r"pad_id=-1 must be in \[0, 31\]"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_input_is_a_clear_value_error(model_params, kwargs, message):
  model, params = model_params
  args = dict(prompts=[[1, 2, 3]], max_new_tokens=8, eos_id=1, pad_id=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    decoding.generate(model, params, args.pop("prompts"), **args)


def test_unsupported_model_is_named(model_params):
  _, params = model_params
  with pytest.raises(ValueError, match="model: dict is not supported"):
    decoding.generate({}, params, [[1]], max_new_tokens=1, eos_id=1, pad_id=0)
