"""llmrl.interop.hf against transformers (reference logits come from transformers on CPU)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from safetensors.numpy import load_file, save_file

from llmrl.interop import hf
from llmrl.models import GPT, count_params, count_params_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 61


def _gpt2(**kw):
  base = dict(vocab_size=VOCAB, n_positions=24, n_embd=16, n_layer=2, n_head=4)
  return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**base, **kw}))


def _llama(**kw):
  base = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=24,
  )
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**base, **kw}))


MODELS = {
  "gpt2": lambda: _gpt2(),
  "gpt2_untied_exact_gelu": lambda: _gpt2(
    tie_word_embeddings=False, activation_function="gelu", n_inner=40
  ),
  "llama_gqa_untied": lambda: _llama(
    num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500.0
  ),
  "llama_mqa_tied_head_dim": lambda: _llama(
    num_key_value_heads=1, head_dim=6, tie_word_embeddings=True
  ),
}


def build(name, seed=0):
  """A tiny random HF model in eval mode, weights scaled up so logits are O(1)."""
  torch.manual_seed(seed)
  model = MODELS[name]().eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      is_norm = "ln" in pname or "norm" in pname
      if is_norm and pname.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  return model


def batch():
  """Token ids with a full row, a left-padded row and a right-padded row."""
  g = torch.Generator().manual_seed(1)
  ids = torch.randint(0, VOCAB, (3, 10), generator=g)
  mask = torch.tensor([[1] * 10, [0] * 3 + [1] * 7, [1] * 8 + [0] * 2])
  positions = (mask.cumsum(1) - 1).clamp(min=0)
  return ids, mask, positions


def hf_logits(model, ids, mask, positions):
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().numpy()


def llmrl_logits(model, params, ids, mask, positions):
  j = lambda t: jnp.asarray(t.numpy(), jnp.int32)  # noqa: E731
  return np.asarray(
    model.apply({"params": params}, j(ids), positions=j(positions), segment_ids=j(mask))
  )


@pytest.mark.parametrize("name", MODELS)
def test_load_matches_transformers_with_padding(name, tmp_path):
  ref_model = build(name)
  ref_model.save_pretrained(tmp_path)
  ids, mask, positions = batch()
  ref = hf_logits(ref_model, ids, mask, positions)
  model, params = hf.load(tmp_path)
  out = llmrl_logits(model, params, ids, mask, positions)
  keep = mask.numpy().astype(bool)
  assert np.abs(ref[keep]).max() > 0.5  # logits are not trivially small
  np.testing.assert_allclose(out[keep], ref[keep], atol=1e-4)
  # Same tree as GPT.init, and the param count agrees with transformers.
  init_tree = jax.eval_shape(
    model.init, {"params": jax.random.key(0)}, jnp.zeros((1, 4), jnp.int32)
  )
  assert jax.tree.structure(nn.unbox(init_tree)["params"]) == jax.tree.structure(params)
  counts = count_params_from_config(model.config)
  assert counts["total"] == count_params(params) == ref_model.num_parameters()
  if model.config.tie_embeddings:
    assert counts["non_embedding"] == ref_model.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_through_transformers(name, tmp_path):
  ref_model = build(name)
  ref_model.save_pretrained(tmp_path / "in")
  model, params = hf.load(tmp_path / "in")
  hf.save(model, params, tmp_path / "out", extra_config={"eos_token_id": 3})
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert type(again) is type(ref_model)
  assert again.config.eos_token_id == 3
  ids, mask, positions = batch()
  keep = mask.numpy().astype(bool)
  np.testing.assert_allclose(
    hf_logits(again, ids, mask, positions)[keep],
    hf_logits(ref_model, ids, mask, positions)[keep],
    atol=1e-5,
  )
  # And back into llmrl: identical params.
  _, params2 = hf.load(tmp_path / "out")
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_sharded_and_bf16_checkpoint(tmp_path):
  ref_model = build("llama_gqa_untied").to(torch.bfloat16)
  ref_model.save_pretrained(tmp_path, max_shard_size="8KB")
  assert os.path.isfile(tmp_path / "model.safetensors.index.json")
  # Reference: transformers reloads the bf16 weights into an fp32 model.
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, dtype=torch.float32
  ).eval()
  ids, mask, positions = batch()
  model, params = hf.load(tmp_path)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  keep = mask.numpy().astype(bool)
  np.testing.assert_allclose(
    llmrl_logits(model, params, ids, mask, positions)[keep],
    hf_logits(ref_model, ids, mask, positions)[keep],
    atol=1e-4,
  )


def test_config_overrides(tmp_path):
  build("gpt2").save_pretrained(tmp_path)
  model, params = hf.load(tmp_path, dtype="bfloat16", attention_impl="blockwise", remat="full")
  assert model.config.dtype == jnp.bfloat16 and model.config.attention_impl == "blockwise"
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_missing_tensor_names_the_key(tmp_path):
  build("llama_gqa_untied").save_pretrained(tmp_path)
  file = tmp_path / "model.safetensors"
  tensors = load_file(file)
  del tensors["model.layers.1.self_attn.k_proj.weight"]
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(
    ValueError, match=r"missing tensors.*model\.layers\.1\.self_attn\.k_proj\.weight"
  ) as e:
    hf.load(tmp_path)
  assert str(tmp_path) in str(e.value)


def test_unexpected_tensor_is_an_error(tmp_path):
  build("gpt2").save_pretrained(tmp_path)
  file = tmp_path / "model.safetensors"
  tensors = load_file(file)
  tensors["transformer.h.0.attn.extra.weight"] = np.zeros((2, 2), np.float32)
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"unexpected tensors.*attn\.extra\.weight"):
    hf.load(tmp_path)


def test_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text(
    json.dumps({"model_type": "bart", "architectures": ["BartForConditionalGeneration"]})
  )
  with pytest.raises(
    ValueError, match=r"'bart'.*BartForConditionalGeneration.*supported model_types: bert, gpt2, llama, mixtral, t5"
  ) as e:
    hf.load(tmp_path)
  assert str(tmp_path) in str(e.value)


def test_unsupported_config_values(tmp_path):
  cfg = transformers.LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=1,
    num_attention_heads=4,
    hidden_act="gelu",
  ).to_dict()
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="hidden_act='gelu' is not supported"):
    hf.load(tmp_path)


def test_no_safetensors(tmp_path):
  build("gpt2").save_pretrained(tmp_path)
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match="no model.safetensors"):
    hf.load(tmp_path)


def test_save_rejects_models_without_hf_equivalent(tmp_path):
  from llmrl.models import GPTConfig

  cfg = GPTConfig(
    vocab_size=VOCAB, max_len=8, num_layers=1, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32
  )
  params = nn.unbox(
    jax.eval_shape(GPT(cfg).init, {"params": jax.random.key(0)}, jnp.zeros((1, 2), jnp.int32))
  )
  with pytest.raises(
    ValueError, match="cannot be written as a Hugging Face checkpoint.*num_kv_heads"
  ):
    hf.save(GPT(cfg), params["params"], tmp_path)
