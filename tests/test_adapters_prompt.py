"""Prompt tuning: the soft prefix equals real prefix tokens, decoding, frozen model, saving."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl import decoding
from llmrl.adapters import prompt as prompt_lib
from llmrl.adapters.tuning import Tuning
from llmrl.models import GPT, GPTConfig
from llmrl.objectives.lm import causal_lm_loss
from llmrl.train import trainer
from tests.helpers import RandomTokens, engine_config

V = 64
SOFT_IDS = np.array([7, 9, 11], np.int32)
HARD = (20, 21)


def _model(style="gpt2"):
  model = GPT(GPTConfig(vocab_size=V, max_len=32, num_layers=2, d_model=32, num_heads=4,
                        d_ff=64, style=style))
  x = jnp.zeros((1, 8), jnp.int32)
  return model, nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)}, x))["params"]


def test_soft_prompt_equals_the_same_embeddings_as_real_tokens():
  for style in ("gpt2", "llama"):
    model, params = _model(style)
    prompt = prompt_lib.SoftPrompt(len(SOFT_IDS), HARD)
    soft = prompt.init(params["embed"]["embedding"], SOFT_IDS)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, V)
    got = prompt.apply(model, params, soft, ids)  # [2, 6, V]
    prefix = np.concatenate([SOFT_IDS, HARD])
    full = jnp.concatenate([jnp.broadcast_to(prefix, (2, len(prefix))), ids], 1)
    want = model.apply({"params": params}, full)[:, len(prefix):]
    np.testing.assert_allclose(got, want, atol=1e-5)
    noise = jax.random.normal(jax.random.PRNGKey(2), soft.shape)  # not a constant: norms
    moved = prompt.apply(model, params, soft + noise, ids)
    assert float(jnp.abs(moved - got).max()) > 1e-3  # the soft rows really are used


def test_soft_prompt_decoding_matches_prefixed_prompts():
  model, params = _model()
  prompt = prompt_lib.SoftPrompt(len(SOFT_IDS), HARD)
  soft = prompt.init(params["embed"]["embedding"], SOFT_IDS)
  prompts = [[5, 6, 7, 8], [30, 31]]  # different lengths: left padding
  prefix = list(SOFT_IDS) + list(HARD)
  for method, beams in (("greedy", 1), ("beam", 2)):
    kw = dict(max_new_tokens=5, method=method, num_beams=beams, eos_id=None, pad_id=0)
    got = decoding.generate(prompt.decoder(model), {"base": params, "soft": soft}, prompts,
                            **kw)
    want = decoding.generate(model, params, [prefix + p for p in prompts], **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


class _Tok:
  vocab_size, pad_id, bos_id, eos_id, end_id = V, 0, 1, 2, 3

  def encode(self, text):
    return [10 + (ord(ch) % 40) for ch in text]


def test_init_from_text_and_from_vocabulary():
  c = prompt_lib.default_config()
  c.num_tokens, c.init, c.init_text = 5, "text", "abc"
  ids = prompt_lib.init_ids(c, _Tok(), np.random.RandomState(0))
  np.testing.assert_array_equal(ids, [10 + 97 % 40, 10 + 98 % 40, 10 + 99 % 40,
                                      10 + 97 % 40, 10 + 98 % 40])  # cycled to n
  c.init = "vocab"
  ids = prompt_lib.init_ids(c, _Tok(), np.random.RandomState(0))
  assert len(ids) == 5 and not set(ids.tolist()) & {0, 1, 2, 3}


def test_training_changes_only_the_soft_prompt_and_saves_it_alone(tmp_path):
  model, params = _model()
  host = jax.tree.map(np.array, params)  # the run donates (deletes) the arrays it starts from
  prompt = prompt_lib.SoftPrompt(4, HARD)
  tuning = Tuning(prompt=prompt, prompt_init_ids=(7, 8, 9, 10))
  init = tuning.init_params(lambda rng: model.init({"params": rng},
                                                   jnp.zeros((1, 8), jnp.int32))["params"])

  def loss_fn(p, batch, rng):
    logits = tuning.apply(model, p, batch["inputs"], rng=rng)
    return causal_lm_loss(logits, batch["targets"], batch["weights"])

  task = trainer.Task(init_params=init, loss_fn=loss_fn, data=RandomTokens(8, 8, V),
                      trainable_mask=tuning.mask(init),
                      initial_params=lambda: tuning.initial(params, 0))
  got = jax.device_get(trainer.train(engine_config(steps=3), str(tmp_path / "run"),
                                     task).state.params)
  for x, y in zip(jax.tree.leaves(got["base"]), jax.tree.leaves(host)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  start = host["embed"]["embedding"][[7, 8, 9, 10]]
  assert got["prompt"].shape == (4, 32) and float(np.abs(got["prompt"] - start).max()) > 1e-4
  assert tuning.count(got) == 4 * 32
  path = prompt_lib.save_soft_prompt(str(tmp_path / "soft"), prompt, got["prompt"])
  assert os.path.getsize(path) < 2048  # 4 x 32 floats + header, not the model
  prompt2, soft2 = prompt_lib.load_soft_prompt(str(tmp_path / "soft"))
  assert prompt2 == prompt
  np.testing.assert_array_equal(soft2, got["prompt"])


def test_prefix_longer_than_the_context_is_a_clear_error():
  from llmrl.adapters import tuning
  from llmrl.config import ConfigError
  model, _ = _model()
  c = ml_collections.ConfigDict({"seed": 0, "prompt_tuning": prompt_lib.default_config()})
  c.prompt_tuning.num_tokens = 8
  try:
    tuning.from_config(c, model, 30, _Tok())
  except ConfigError as e:
    assert "exceeds the model's max_len=32" in str(e)
  else:
    raise AssertionError("no error")
