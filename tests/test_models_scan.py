"""Layer scan (GPTConfig.scan_layers): same function as the unrolled blocks, stacked params.

References are the unscanned model (a separate code path: a Python loop over
layers_{i}) on the same weights, converted with unscan_params/scan_params.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl.config import ConfigError
from llmrl.decoding import adapters
from llmrl.models import GPT, GPTConfig, MoEConfig
from llmrl.models.gpt import init_cache, scan_params, unscan_params
from llmrl.tasks import lm
from llmrl.train import optim, trainer
from tests.helpers import RandomTokens, engine_config, gpt_task

VOCAB = 53
LAYERS = 3


def tiny(**kw) -> GPTConfig:
  base = dict(vocab_size=VOCAB, max_len=16, num_layers=LAYERS, d_model=32, num_heads=4, d_ff=64)
  base.update(kw)
  return GPTConfig(**base)


CONFIGS = {
  "gpt2": tiny(style="gpt2"),
  "llama_gqa": tiny(style="llama", num_kv_heads=2, tie_embeddings=False),
}


@functools.lru_cache(maxsize=None)
def scanned_params(cfg, seed=0):
  """Params of GPT(cfg with scan_layers) from its own init (so the stacked shapes are real)."""
  ids = jnp.zeros((1, 4), jnp.int32)
  model = GPT(cfg.replace(scan_layers=True))
  params = jax.jit(model.init)({"params": jax.random.key(seed)}, ids)["params"]
  return jax.tree.map(np.asarray, nn.unbox(params))  # host copies: the trainer donates buffers


def batch():
  """ids [2, 12] with a packed row (segments 1, 2) and a right-padded row (segment 0)."""
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, VOCAB)
  seg = jnp.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], jnp.int32)
  pos = jnp.array([list(range(5)) + list(range(7)), list(range(12))], jnp.int32)
  return ids, pos, seg


def max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))


@pytest.mark.parametrize("name", CONFIGS)
def test_stacked_tree_and_logits_match_unscanned(name):
  cfg = CONFIGS[name]
  p = scanned_params(cfg)
  assert "layers_0" not in p
  for leaf in jax.tree.leaves(p["layers"]):
    assert leaf.shape[0] == LAYERS
  ids, pos, seg = batch()
  got = jax.jit(GPT(cfg.replace(scan_layers=True)).apply)({"params": p}, ids, pos, seg)
  want = jax.jit(GPT(cfg).apply)({"params": unscan_params(p)}, ids, pos, seg)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # round trip of the converters is exact
  assert max_diff(scan_params(unscan_params(p)), p) == 0.0


@pytest.mark.parametrize("name, remat", [("gpt2", "none"), ("llama_gqa", "full")])
def test_grads_match_unscanned_with_remat(name, remat):
  cfg = CONFIGS[name]
  p = scanned_params(cfg)
  ids, pos, seg = batch()

  def loss(model, params):
    logits = model.apply({"params": params}, ids, pos, seg)  # [b, l, vocab]
    return jnp.mean(jax.nn.log_softmax(logits)[..., 7] * (seg > 0))

  want = jax.jit(jax.grad(lambda q: loss(GPT(cfg), q)))(unscan_params(p))
  model = GPT(cfg.replace(scan_layers=True, remat=remat))
  got = jax.jit(jax.grad(lambda q: loss(model, q)))(p)
  assert max_diff(unscan_params(got), want) < 1e-6


def test_logical_axis_names_have_layers_first():
  boxed = jax.eval_shape(GPT(tiny(scan_layers=True)).init, {"params": jax.random.key(0)},
                         jnp.zeros((1, 4), jnp.int32))["params"]
  leaves = jax.tree.leaves(boxed["layers"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(leaf.names[0] == "layers" for leaf in leaves)


def test_dropout_differs_per_layer_and_per_rng():
  cfg = tiny(style="llama", dropout_rate=0.3, scan_layers=True)
  p = scanned_params(cfg)
  ids, pos, seg = batch()
  apply = jax.jit(lambda seed: GPT(cfg).apply({"params": p}, ids, pos, seg, deterministic=False,
                                              rngs={"dropout": jax.random.key(seed)}))
  run = lambda seed: apply(jnp.uint32(seed))  # noqa: E731
  assert float(jnp.abs(run(1) - run(2)).max()) > 1e-3
  np.testing.assert_array_equal(run(1), run(1))


def test_kv_cache_decoding_with_scan_and_adapter():
  cfg = CONFIGS["llama_gqa"]
  p = scanned_params(cfg)
  ids, _, _ = batch()
  full = jax.jit(GPT(cfg.replace(scan_layers=True)).apply)({"params": p}, ids)  # [b, 12, vocab]
  dcfg = cfg.replace(scan_layers=True)
  cache = init_cache(dcfg, 2)
  assert cache["layers"]["attn"]["cached_key"].shape[0] == LAYERS
  apply = jax.jit(lambda v, x: GPT(dcfg.replace(decode=True)).apply(v, x, mutable=["cache"]))
  out, v = apply({"params": p, "cache": cache}, ids[:, :7])
  out2, _ = apply({"params": p, "cache": v["cache"]}, ids[:, 7:8])
  np.testing.assert_allclose(out, full[:, :7], atol=1e-5)
  np.testing.assert_allclose(out2[:, 0], full[:, 7], atol=1e-5)
  # the decoding adapter runs the unscanned decode model on converted params
  dec = adapters.as_adapter(GPT(dcfg))
  mask = jnp.ones((2, 7), jnp.int32)
  logits, state = jax.jit(dec.prefill, static_argnums=3)(p, ids[:, :7], mask, 4)
  np.testing.assert_allclose(logits, full[:, 6], atol=1e-5)
  logits, _ = jax.jit(dec.step)(p, state, ids[:, 7])
  np.testing.assert_allclose(logits, full[:, 7], atol=1e-5)


def test_train_steps_match_unscanned_on_fsdp_mesh(tmp_path):
  """2 AdamW steps (weight decay on, FSDP x data mesh): same params as the unrolled model."""
  cfg = dataclasses.replace(CONFIGS["gpt2"], max_len=8)
  start = scanned_params(cfg)
  c = engine_config(steps=2, fsdp=2)
  assert c.optim.weight_decay > 0
  finals = {}
  for scan in (False, True):
    model = GPT(cfg.replace(scan_layers=scan))
    host = start if scan else unscan_params(start)
    task = dataclasses.replace(gpt_task(model, RandomTokens(8, 8, VOCAB)),
                               initial_params=lambda h=host: h)
    state = trainer.train(c, str(tmp_path / str(scan)), task).state
    finals[scan] = jax.device_get(state.params)
  assert max_diff(unscan_params(finals[True]), finals[False]) < 1e-5
  assert max_diff(finals[False], unscan_params(start)) > 1e-3  # it did train


def test_decay_mask_ignores_the_layer_axis():
  mask = optim._decay_mask(scanned_params(CONFIGS["gpt2"]))
  assert mask["layers"]["attn_norm"]["scale"] is False
  assert mask["layers"]["mlp"]["wi"]["kernel"] is True
  assert mask["layers"]["mlp"]["wi"]["bias"] is False


def test_config_errors():
  with pytest.raises(ValueError, match="scan_layers=True needs identical blocks"):
    tiny(scan_layers=True, moe=MoEConfig(num_experts=2, experts_per_token=1, every=2))
  c = lm.model_config_block()
  c.scan_layers, c.moe.num_experts = True, 2
  with pytest.raises(ConfigError, match="config.model.scan_layers"):
    lm.validate_model(c, 16)


def test_hf_save_and_load_with_scan_layers(tmp_path):
  """interop.hf writes a scanned model as layers_{i} tensors and stacks them again on load."""
  from llmrl.interop import hf

  cfg = CONFIGS["llama_gqa"].replace(scan_layers=True)
  p = scanned_params(cfg)
  hf.save(GPT(cfg), p, str(tmp_path))
  flat_model, flat = hf.load(str(tmp_path))  # the plain (unscanned) load path
  assert not flat_model.config.scan_layers and "layers_2" in flat
  assert max_diff(flat, unscan_params(p)) == 0.0
  model, stacked = hf.load(str(tmp_path), scan_layers=True)
  assert model.config.scan_layers and max_diff(stacked, p) == 0.0


def test_lora_refuses_a_scanned_model():
  from llmrl.adapters.lora import LoRA

  model = GPT(tiny(scan_layers=True))
  with pytest.raises(ConfigError, match="scan_layers=False"):
    LoRA.for_model(model, jnp.zeros((1, 4), jnp.int32), rank=2, alpha=4, targets=("attn/query",))
