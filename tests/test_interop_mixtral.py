"""llmrl.interop.hf loads Mixtral (MoE) checkpoints: logits equal transformers' on CPU."""

import json

import numpy as np
import pytest
from safetensors.torch import save_file

from llmrl.interop import hf
from llmrl.models import count_params, count_params_from_config
from tests.test_interop_hf import batch, hf_logits, llmrl_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 61


def build(experts=4, k=2, seed=0, **kw):
  """A tiny random Mixtral in eval mode, weights scaled up so logits and routing are O(1)."""
  torch.manual_seed(seed)
  cfg = transformers.MixtralConfig(
    vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24,
    num_local_experts=experts, num_experts_per_tok=k, rope_theta=1000.0, **kw)  # fmt: skip
  model = transformers.MixtralForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("experts,k", [(4, 2), (3, 1)])
def test_mixtral_logits_match_transformers(experts, k, tmp_path):
  ref_model = build(experts, k)
  ref_model.save_pretrained(tmp_path)
  ids, mask, positions = batch()
  ref = hf_logits(ref_model, ids, mask, positions)
  model, params = hf.load(tmp_path)
  moe = model.config.moe
  assert (moe.num_experts, moe.experts_per_token, moe.every, moe.dropless) == (experts, k, 1, True)
  out = llmrl_logits(model, params, ids, mask, positions)
  keep = mask.numpy().astype(bool)
  assert np.abs(ref[keep]).max() > 0.5
  np.testing.assert_allclose(out[keep], ref[keep], atol=1e-4)
  counts = count_params_from_config(model.config)
  assert counts["total"] == count_params(params) == ref_model.num_parameters()
  expert = 3 * 16 * 24
  assert counts["total"] - counts["active"] == 2 * (experts - k) * expert


def test_mixtral_fused_expert_layout_and_einsum_dispatch(tmp_path):
  # transformers >= 5 keeps experts fused in memory (gate_up_proj [E, 2F, d], down_proj
  # [E, d, F]); a file written from that state dict loads the same.
  ref_model = build(4, 2, seed=1)
  ref_model.config.save_pretrained(tmp_path)
  state = {k: v.contiguous() for k, v in ref_model.state_dict().items()}
  assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
  save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  ids, mask, positions = batch()
  ref = hf_logits(ref_model, ids, mask, positions)
  keep = mask.numpy().astype(bool)
  model, params = hf.load(tmp_path)
  np.testing.assert_allclose(llmrl_logits(model, params, ids, mask, positions)[keep], ref[keep],
                             atol=1e-4)  # fmt: skip
  moe = model.config.moe
  model, params = hf.load(tmp_path, moe=moe.__class__(**{**moe.__dict__, "dispatch": "einsum"}))
  np.testing.assert_allclose(llmrl_logits(model, params, ids, mask, positions)[keep], ref[keep],
                             atol=1e-4)  # fmt: skip


def test_mixtral_unsupported_parts_are_named(tmp_path):
  build(sliding_window=4).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="sliding_window=4"):
    hf.load(tmp_path)
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  config["sliding_window"] = None
  with open(tmp_path / "config.json", "w") as f:
    json.dump(config, f)
  model, params = hf.load(tmp_path)
  with pytest.raises(ValueError, match="Mixtral"):
    hf.save(model, params, tmp_path / "out")
