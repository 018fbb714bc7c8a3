"""LoRA adapters: parameter counts, merge/unmerge, frozen base, optimizer state, checkpoints."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.adapters import lora as lora_lib
from llmrl.adapters.tuning import Tuning
from llmrl.config import ConfigError
from llmrl.models import GPT, GPTConfig
from llmrl.objectives.lm import causal_lm_loss
from llmrl.train import trainer
from tests.helpers import RandomTokens, engine_config

D, FF, R = 32, 64, 4
CFG = dict(vocab_size=64, max_len=16, num_layers=2, d_model=D, num_heads=4, d_ff=FF)
X = jnp.zeros((1, 8), jnp.int32)


def _model(**kw):
  model = GPT(GPTConfig(**{**CFG, **kw}))
  params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)}, X))["params"]
  return model, params


def _random_adapters(lora, seed=1):
  """Adapters with non-zero B (a fresh B is 0, which would hide merge errors)."""
  ad = lora.init(jax.random.PRNGKey(seed))
  leaves, tree = jax.tree.flatten(ad)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape) for k, x in
                                   zip(keys, leaves)])


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_trainable_count_is_2rd_square_and_r_in_plus_out_rectangular(style):
  model, _ = _model(style=style)
  square = lora_lib.LoRA.for_model(model, X, rank=R, alpha=8, targets=("attn/query", "attn/out"))
  ad = square.init(jax.random.PRNGKey(0))
  n = sum(np.size(x) for x in jax.tree.leaves(ad))
  # query [d, heads, head_dim] and out [heads, head_dim, d] are d x d: 2 r d each, 2 layers.
  assert n == 2 * 2 * (2 * R * D) == square.count()
  rect = lora_lib.LoRA.for_model(model, X, rank=R, alpha=8, targets=("mlp/wo",))
  n = sum(np.size(x) for x in jax.tree.leaves(rect.init(jax.random.PRNGKey(0))))
  assert n == 2 * R * (FF + D)  # wo: [d_ff, d]
  a = ad["layers_0"]["attn"]["query"]["a"]
  assert a.shape == (D, R) and ad["layers_0"]["attn"]["query"]["b"].shape == (R, 4, D // 4)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_merged_and_unmerged_logits_are_equal(style):
  model, params = _model(style=style)
  lora = lora_lib.LoRA.for_model(model, X, rank=R, alpha=8,
                                 targets=("attn/query", "attn/key", "attn/value", "attn/out",
                                          "mlp/*"))
  ids = jax.random.randint(jax.random.PRNGKey(3), (2, 10), 0, 64)
  fresh = lora.apply(params, lora.init(jax.random.PRNGKey(1)), ids, model=model)
  base = model.apply({"params": params}, ids)
  np.testing.assert_array_equal(fresh, base)  # B = 0: exactly the base
  ad = _random_adapters(lora)
  unmerged = lora.apply(params, ad, ids, model=model)
  merged_params = lora.merge(params, ad)
  merged = model.apply({"params": merged_params}, ids)
  assert float(jnp.abs(unmerged - base).max()) > 0.05  # the adapters do change the model
  np.testing.assert_allclose(unmerged, merged, atol=2e-5, rtol=1e-5)
  # Independent reference: W + (alpha/r) A B built by numpy for one kernel.
  a, b = (np.asarray(ad["layers_1"]["mlp"]["wo"][k]) for k in "ab")
  want = np.asarray(params["layers_1"]["mlp"]["wo"]["kernel"]) + 2.0 * a @ b
  np.testing.assert_allclose(merged_params["layers_1"]["mlp"]["wo"]["kernel"], want, atol=1e-6)
  back = lora.unmerge(merged_params, ad)
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  assert params["layers_0"]["attn"]["query"]["kernel"] is not \
      merged_params["layers_0"]["attn"]["query"]["kernel"]  # merge does not edit in place


def test_dropout_only_with_rng():
  model, params = _model(remat="full")
  lora = lora_lib.LoRA.for_model(model, X, rank=R, alpha=8, targets=("attn/query",),
                                 dropout=0.5)
  ad = _random_adapters(lora)
  ids = jnp.arange(10)[None] % 64
  det = lora.apply(params, ad, ids, model=model)
  np.testing.assert_allclose(det, model.apply({"params": lora.merge(params, ad)}, ids),
                             atol=2e-5)
  d1 = lora.apply(params, ad, ids, model=model, rng=jax.random.PRNGKey(0))
  d2 = lora.apply(params, ad, ids, model=model, rng=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(d1, d2)
  assert float(jnp.abs(d1 - det).max()) > 1e-3


def test_bad_target_is_a_clear_error():
  model, _ = _model()
  with pytest.raises(ConfigError, match="'attn/qkv' matches no projection"):
    lora_lib.LoRA.for_model(model, X, rank=2, alpha=4, targets=("attn/qkv",))
  with pytest.raises(ConfigError, match="lora.rank"):
    lora_lib.LoRA.for_model(model, X, rank=0, alpha=4, targets=("attn/query",))


def _leaf_bytes(tree) -> int:
  return sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_training_changes_only_adapters_and_adam_state_is_adapter_sized(tmp_path):
  model, params = _model()
  lora = lora_lib.LoRA.for_model(model, X, rank=R, alpha=8, targets=("attn/query", "attn/value"))
  tuning = Tuning(lora=lora)
  init = tuning.init_params(lambda rng: model.init({"params": rng}, X)["params"])
  host_base = jax.tree.map(np.array, params)

  def loss_fn(p, batch, rng):
    logits = tuning.apply(model, p, batch["inputs"], rng=rng)
    return causal_lm_loss(logits, batch["targets"], batch["weights"])

  task = trainer.Task(init_params=init, loss_fn=loss_fn, data=RandomTokens(8, 8, 64),
                      trainable_mask=tuning.mask(init),
                      initial_params=lambda: tuning.initial(params, 0))
  state = trainer.train(engine_config(steps=3), str(tmp_path), task).state
  got = jax.device_get(state.params)
  for x, y in zip(jax.tree.leaves(got["base"]), jax.tree.leaves(host_base)):
    np.testing.assert_array_equal(x, y)  # bitwise unchanged
    assert x.tobytes() == y.tobytes()
  b = got["lora"]["layers_0"]["attn"]["query"]["b"]
  assert float(np.abs(b).max()) > 0  # B left zero: the adapters trained
  # Adam keeps two moments per trainable leaf only: 2 x adapter bytes (+ counters).
  opt_bytes = _leaf_bytes(state.opt_state)
  adapter_bytes = _leaf_bytes(got["lora"])
  assert 2 * adapter_bytes <= opt_bytes < 2 * adapter_bytes + 64
  assert opt_bytes < 0.2 * _leaf_bytes(got["base"])


def test_adapter_only_checkpoint_is_small_and_round_trips(tmp_path):
  model, params = _model()
  lora = lora_lib.LoRA.for_model(model, X, rank=2, alpha=4, targets=("attn/query", "mlp/wo"))
  ad = _random_adapters(lora)
  path = lora_lib.save_adapter(str(tmp_path / "adapter"), lora, ad)
  full = sum(np.size(x) * 4 for x in jax.tree.leaves(params))
  size = os.path.getsize(path)
  assert size < 0.1 * full, (size, full)
  lora2, ad2 = lora_lib.load_adapter(str(tmp_path / "adapter"))
  assert lora2 == lora
  ids = jnp.arange(12)[None] % 64
  np.testing.assert_array_equal(lora.apply(params, ad, ids, model=model),
                                lora2.apply(params, ad2, ids, model=model))


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_other_families_merge_equals_unmerged(family):
  from llmrl.models.bert import Bert, BertConfig
  from llmrl.models.t5 import T5, T5Config
  ids = jax.random.randint(jax.random.PRNGKey(3), (2, 7), 0, 37)
  if family == "bert":
    model = Bert(BertConfig(vocab_size=37, max_len=16, num_layers=2, d_model=32, num_heads=4,
                            d_ff=48))
    args, targets = (ids,), ("attn/*", "mlp/*")
  else:
    model = T5(T5Config(vocab_size=37, num_layers=2, d_model=32, num_heads=4, d_ff=48,
                        max_len=16))
    args, targets = (ids, ids[:, :5]), ("attn/*", "cross_attn/*", "mlp/*")
  params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)}, *args))["params"]
  lora = lora_lib.LoRA.for_model(model, *args, rank=2, alpha=4, targets=targets)
  if family == "t5":  # encoder, decoder self- and cross-attention all picked by the patterns
    assert "decoder/layers_1/cross_attn/query" in lora.paths
    assert "encoder/layers_0/mlp/wo" in lora.paths
  ad = _random_adapters(lora)
  unmerged = lora.apply(params, ad, *args, model=model)
  merged = model.apply({"params": lora.merge(params, ad)}, *args)
  assert float(jnp.abs(unmerged - model.apply({"params": params}, *args)).max()) > 1e-2
  np.testing.assert_allclose(unmerged, merged, atol=2e-5, rtol=1e-5)


def test_lora_decoding_matches_merged_weights():
  from llmrl import decoding
  model, params = _model()
  lora = lora_lib.LoRA.for_model(model, X, rank=R, alpha=8, targets=("attn/*", "mlp/*"))
  ad = _random_adapters(lora)
  prompts = [[5, 6, 7, 8], [30, 31]]
  kw = dict(max_new_tokens=5, eos_id=None, pad_id=0)
  for method, beams in (("greedy", 1), ("beam", 2)):
    got = decoding.generate(lora_lib.decoder(model, lora), {"base": params, "lora": ad},
                            prompts, method=method, num_beams=beams, **kw)
    want = decoding.generate(model, lora.merge(params, ad), prompts, method=method,
                             num_beams=beams, **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
    if method == "greedy":
      greedy = got
  plain = decoding.generate(model, params, prompts, method="greedy", **kw)  # adapters off
  assert not np.array_equal(plain.tokens, greedy.tokens) or \
      float(np.abs(np.asarray(plain.logprobs) - np.asarray(greedy.logprobs)).max()) > 1e-3
