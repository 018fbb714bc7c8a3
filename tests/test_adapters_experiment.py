"""End to end: peft_compare (full / LoRA / prompt SFT), then LoRA reward model and LoRA RLHF."""

import json
import os

import jax
import numpy as np

from llmrl.adapters import tuning
from llmrl.tasks import lm
from tests import launcher


def test_peft_compare_then_lora_reward_model_and_rlhf(tmp_path, data_cache):
  wd = str(tmp_path / "cmp")
  launcher.run("peft_compare", "configs/peft_compare.py:tiny", wd,
               f"--config.cache_dir={data_cache}", "--config.ranks=2")
  rows = {r["variant"]: r for r in json.load(open(os.path.join(wd, "results.json")))}
  assert set(rows) == {"full", "lora_r2", "prompt_n4"}
  full, lora, prompt = rows["full"], rows["lora_r2"], rows["prompt_n4"]
  assert lora["trainable_params"] < 0.05 * full["trainable_params"]
  assert prompt["trainable_params"] == 4 * 64  # 4 soft tokens x d_model
  # Adam: two moments per trainable parameter (+ a step counter), none for the frozen base.
  for r in rows.values():
    assert 8 * r["trainable_params"] <= r["optimizer_state_bytes"] <= \
        8 * r["trainable_params"] + 64
  assert lora["saved_bytes"] < 0.1 * full["saved_bytes"]
  assert os.path.getsize(os.path.join(wd, "peft_compare.png")) > 0
  for r in rows.values():
    assert 0.0 <= r["response_token_accuracy"] <= 1.0

  sft_dir, rm, rl = os.path.join(wd, "lora_r2"), str(tmp_path / "rm"), str(tmp_path / "rl")
  cache = f"--config.data.cache_dir={data_cache}"
  launcher.run("reward_model", "configs/reward_model.py:tiny", rm, cache,
               f"--config.init_from={sft_dir}", "--config.train.steps=4",
               "--config.lora.rank=2")
  assert os.path.isfile(os.path.join(rm, "adapter", "adapter.safetensors"))
  launcher.run("rlhf", "configs/rlhf.py:tiny", rl, cache, f"--config.sft_from={sft_dir}",
               f"--config.rm_from={rm}", "--config.ppo.iterations=2",
               "--config.lora.rank=2", "--config.eval_max_new_tokens=4")
  assert os.path.isfile(os.path.join(rl, "eval_chat.json"))
  # The RLHF base is the merged LoRA-SFT model, unchanged by PPO.
  sft_plain = tuning.stage_params(lm.load_stage(sft_dir))
  rl_params = lm.load_stage(rl, params_key="").params
  assert set(rl_params) == {"base", "policy", "critic"}
  base, plain = jax.tree.leaves(rl_params["base"]), jax.tree.leaves(sft_plain)
  assert len(base) == len(plain)
  for a, b in zip(base, plain):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
