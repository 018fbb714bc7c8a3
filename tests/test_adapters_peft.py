"""peft LoRA adapter folders loaded onto imported HF models: logits equal peft's (atol 1e-4)."""

import json
import os

import numpy as np
import pytest

from llmrl.adapters import hf_peft
from llmrl.interop import hf
from tests.test_interop_hf import batch, build

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

CASES = {
  "llama": ("llama_gqa_untied", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                 "up_proj", "down_proj"], {}),
  "llama_rslora_attn": ("llama_mqa_tied_head_dim", ["q_proj", "v_proj"], {"use_rslora": True}),
  "gpt2_fused_qkv": ("gpt2", ["c_attn", "c_proj", "c_fc"], {"fan_in_fan_out": True}),
}


def _adapted(tmp_path, name):
  """A tiny HF base saved to tmp/base and its peft adapter (random, non-zero B) in tmp/adapter."""
  hf_name, targets, extra = CASES[name]
  base = build(hf_name)
  base.save_pretrained(str(tmp_path / "base"))
  model = peft.get_peft_model(base, peft.LoraConfig(r=3, lora_alpha=5, target_modules=targets,
                                                    **extra))
  torch.manual_seed(3)
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if "lora_" in pname:
        p.copy_(0.3 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path / "adapter"))
  return model.eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_peft_adapter_logits_match(tmp_path, name):
  model = _adapted(tmp_path, name)
  ids, mask, positions = batch()
  with torch.no_grad():
    want = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    with model.disable_adapter():
      base_logits = model(input_ids=ids, attention_mask=mask,
                          position_ids=positions).logits.numpy()
  real = mask.numpy()[..., None] > 0
  assert np.abs((want - base_logits) * real).max() > 0.05  # the adapter matters
  ours, params, lora, adapters = hf_peft.load(str(tmp_path / "base"), str(tmp_path / "adapter"),
                                              merge=False)
  args = (ids.numpy(), positions.numpy(), mask.numpy())
  unmerged = np.asarray(lora.apply(params, adapters, *args, model=ours))
  np.testing.assert_allclose(unmerged * real, want * real, atol=1e-4)
  # The documented entry point: hf.load with adapter= merges the adapter.
  _, merged_params = hf.load(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"))
  merged = np.asarray(ours.apply({"params": merged_params}, *args))
  np.testing.assert_allclose(merged * real, want * real, atol=1e-4)
  off = np.asarray(lora.apply(params, None, *args, model=ours))  # adapters off = the base
  np.testing.assert_allclose(off * real, base_logits * real, atol=1e-4)


def test_unsupported_adapter_is_a_clear_error(tmp_path):
  _adapted(tmp_path, "llama_rslora_attn")
  cfg_path = tmp_path / "adapter" / "adapter_config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg["bias"] = "all"
  cfg_path.write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="bias='none'"):
    hf_peft.load(str(tmp_path / "base"), str(tmp_path / "adapter"))
  os.remove(tmp_path / "adapter" / "adapter_config.json")
  with pytest.raises(ValueError, match="no adapter_config.json"):
    hf_peft.load(str(tmp_path / "base"), str(tmp_path / "adapter"))
