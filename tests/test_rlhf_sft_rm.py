"""SFT response-only loss, the reward model's ranking loss, and the stage chain."""

import itertools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl import data
from llmrl.config import ConfigError
from llmrl.models import GPTConfig
from llmrl.rlhf import reward, sft
from llmrl.train.metrics import read_jsonl
from tests import launcher


@pytest.fixture(scope="module")
def tiny(data_cache):
  cfg = data.default_config()
  cfg.cache_dir = data_cache
  cfg.world_size = "tiny"
  return cfg, data.get_tokenizer(cfg)


def test_sft_weights_cover_exactly_the_response(tiny):
  cfg, tok = tiny
  examples = data.examples(cfg, "sft")[:20]
  arrays = sft.chat_arrays(examples, tok, 96)
  for i, ex in enumerate(examples):
    w = arrays["weights"][i] > 0
    trained = tok.decode(arrays["targets"][i][w])
    assert trained.strip() == ex["response"].strip() + "<|end|>" or \
        trained.replace("<|end|>", "").strip() == ex["response"].strip()
    assert tok.end_id in arrays["targets"][i][w]
    # Padding is pad (not eos), carries no loss and has segment 0.
    pad = arrays["segment_ids"][i] == 0
    assert np.all(arrays["inputs"][i][pad] == tok.pad_id) and not np.any(w & pad)
    # Targets are the inputs shifted by one.
    real = ~pad
    np.testing.assert_array_equal(arrays["inputs"][i][real][1:], arrays["targets"][i][real][:-1])


def test_sft_too_long_is_a_clear_error(tiny):
  cfg, tok = tiny
  with pytest.raises(ValueError, match="config.train.seq_len >="):
    sft.chat_arrays(data.examples(cfg, "sft"), tok, 8)


def _reference_ranking_loss(r, s, margin=0.0):
  """Independent loop over the C(K,2) comparisons of each prompt."""
  total, correct = 0.0, 0.0
  for rr, ss in zip(r, s):
    k = len(rr)
    loss, n, good = 0.0, 0, 0
    for i, j in itertools.permutations(range(k), 2):
      if ss[i] > ss[j]:
        loss += -math.log(1 / (1 + math.exp(-(rr[i] - rr[j] - margin * (ss[i] - ss[j])))))
        n += 1
        good += rr[i] > rr[j]
    total += loss / math.comb(k, 2)
    correct += good / max(n, 1)
  return total, correct


def test_ranking_loss_matches_reference():
  rng = np.random.RandomState(0)
  r = rng.randn(5, 4).astype(np.float32)
  s = np.array([[1, 0.5, 0, -4], [0, 0, -2, -4], [1, 1, 1, 1], [-4, -2, 0, 1], [0.5, -2, 0.5, 0]],
               np.float32)
  loss, (weight, sums) = reward.ranking_loss(jnp.asarray(r), jnp.asarray(s))
  ref_loss, ref_correct = _reference_ranking_loss(r, s)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(sums["pair_accuracy"]), ref_correct, rtol=1e-6)
  assert float(weight) == 5
  # All rewards equal: each strictly ordered pair costs log 2.
  loss0, _ = reward.ranking_loss(jnp.zeros((1, 4)), jnp.asarray([[1, 0.5, 0, -4]]))
  np.testing.assert_allclose(float(loss0), math.log(2), rtol=1e-6)
  # Margin (Llama 2 style): the gap the labeler put between two answers is demanded.
  loss_m, (_, sums_m) = reward.ranking_loss(jnp.asarray(r), jnp.asarray(s), 0.7)
  ref_m, _ = _reference_ranking_loss(r, s, 0.7)
  np.testing.assert_allclose(float(loss_m), ref_m, rtol=1e-5)
  np.testing.assert_allclose(float(sums_m["pair_accuracy"]), ref_correct, rtol=1e-6)
  assert ref_m > ref_loss


def test_pairwise_accuracy_hand_case():
  scores = np.array([[1.0, 0.0, -4.0]])
  assert reward.pairwise_accuracy(np.array([[3.0, 2.0, 1.0]]), scores) == 1.0
  assert reward.pairwise_accuracy(np.array([[1.0, 2.0, 3.0]]), scores) == 0.0
  np.testing.assert_allclose(reward.pairwise_accuracy(np.array([[2.0, 3.0, 1.0]]), scores), 2 / 3)


def test_heldout_split_keeps_unseen_facts_out_of_training():
  exs = [{"subject": f"s{i // 3}", "relation": "r", "n": i} for i in range(60)]  # 20 facts x 3
  train, heldout, unseen = reward.split_heldout(exs, 0.1, fact_fraction=0.25)
  fact = lambda e: (e["subject"], e["relation"])  # noqa: E731
  assert sorted(e["n"] for e in train + heldout + unseen) == list(range(60))
  assert {fact(e) for e in unseen} == {(f"s{i}", "r") for i in (3, 7, 11, 15, 19)}
  assert not {fact(e) for e in unseen} & {fact(e) for e in train + heldout}
  assert len(heldout) == 4 and all(fact(e) in {fact(t) for t in train} for e in heldout)
  train1, heldout1, unseen1 = reward.split_heldout(exs, 0.1)
  assert unseen1 == [] and len(heldout1) == 6 and len(train1) == 54
  with pytest.raises(ConfigError, match="heldout_fact_fraction=1.5"):
    reward.split_heldout(exs, 0.1, 1.5)
  with pytest.raises(ConfigError, match="leaves 3 for training and 0 held out"):
    reward.split_heldout(exs[:3], 0.1)


def test_reward_is_read_at_the_last_real_token_with_padding():
  cfg = GPTConfig(vocab_size=50, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=64)
  model = reward.ScalarHeadModel(cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.meta.unbox(params)
  kernel = params["head"]["kernel"]
  params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1), kernel.shape)  # non-zero head
  seq = jnp.array([[5, 6, 7, 8, 9]])
  alone = model.apply({"params": params}, seq)[0, -1]
  # Right padding: read at index 4.
  right = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0]])
  seg_r = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0]])
  v_r = model.apply({"params": params}, right, None, seg_r)
  np.testing.assert_allclose(reward.read_at(v_r, jnp.array([4]))[0], alone, rtol=1e-5, atol=1e-6)
  # Left padding with positions restarting at the first real token.
  left = jnp.array([[0, 0, 0, 5, 6, 7, 8, 9]])
  seg_l = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1]])
  pos_l = jnp.array([[0, 0, 0, 0, 1, 2, 3, 4]])
  v_l = model.apply({"params": params}, left, pos_l, seg_l)
  np.testing.assert_allclose(v_l[0, -1], alone, rtol=1e-5, atol=1e-6)
  assert abs(float(v_l[0, -2] - alone)) > 1e-3  # a different token gives a different value


@pytest.mark.parametrize("impl", ["plain", "blockwise", "jax"])
def test_shared_prompt_rows_score_like_separate_chats(tiny, impl):
  """One row per prompt (prompt once, K responses after it) gives each response the reward
  it gets alone in its own padded row, for every attention kernel."""
  cfg, tok = tiny
  examples = data.examples(cfg, "preferences")[:5]
  sep = reward.preference_arrays(examples, tok, 96)
  shared = reward.shared_prompt_arrays(examples, tok, 96)
  k = len(examples[0]["responses"])
  assert shared["inputs"].shape[0] == 5 and shared["last"].shape == (5, k)
  assert shared["inputs"].shape[1] % 8 == 0
  assert (shared["segment_ids"] != 0).sum() < (sep["segment_ids"] != 0).sum()  # fewer tokens
  np.testing.assert_array_equal(shared["scores"], sep["scores"])
  mcfg = GPTConfig(vocab_size=tok.vocab_size, max_len=128, num_layers=2, d_model=32,
                   num_heads=4, d_ff=64, attention_impl=impl, attention_block_size=16)
  model = reward.ScalarHeadModel(mcfg)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1), params["head"]["kernel"].shape)
  fn = reward.make_rewards_fn(model)
  want = fn(params, {key: v for key, v in sep.items() if key != "scores"})
  got = fn(params, {key: v for key, v in shared.items() if key != "scores"})
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  assert float(jnp.std(want)) > 1e-2  # responses really score differently


def test_pretrain_sft_reward_model_chain(tmp_path, data_cache):
  cache = f"--config.data.cache_dir={data_cache}"
  pre, sft_dir, rm = (str(tmp_path / n) for n in ("pre", "sft", "rm"))
  launcher.run("pretrain", "configs/pretrain.py:tiny", pre, cache, "--config.train.steps=20")
  launcher.run("sft", "configs/sft.py:tiny", sft_dir, cache, f"--config.init_from={pre}",
               "--config.train.steps=10")
  out = launcher.run("reward_model", "configs/reward_model.py:tiny", rm, cache,
                     f"--config.init_from={sft_dir}", "--config.train.steps=10",
                     "--config.train.log_every=1")
  assert "heldout_accuracy" in out.stderr
  ev = json.load(open(os.path.join(rm, "eval.json")))
  assert 0.0 <= ev["reward_model.heldout_accuracy"] <= 1.0 and ev["heldout_prompts"] > 0
  # SFT trained only on response tokens: far fewer than all non-pad tokens.
  sft_recs = read_jsonl(os.path.join(sft_dir, "metrics.jsonl"))
  assert 0 < sft_recs[-1]["train/weight"] < 8 * 96 / 3
  # Stages record the model they really trained (taken from the parent).
  assert json.load(open(os.path.join(rm, "config.json")))["model"] == \
      json.load(open(os.path.join(pre, "config.json")))["model"]
  rm_recs = read_jsonl(os.path.join(rm, "metrics.jsonl"))
  assert any("eval/heldout_accuracy" in r for r in rm_recs)
  # The reward model's ranking loss starts at log 2: the head is zero-initialised, so every
  # reward is 0 and each strictly ordered pair costs -log sigmoid(0 - margin * gap)
  # (log 2 at margin 0); a tied pair costs nothing, and the sum over pairs is divided by
  # C(K, 2). Derived from the labeler scores of the run's first batch (same seed, same order).
  from configs import reward_model as rm_config
  c = rm_config.get_config("tiny")
  c.init_from, c.data.cache_dir = sft_dir, data_cache
  first = next(reward.make_task(c)[0].data)["scores"].astype(np.float64)  # [batch, K]
  k = first.shape[1]
  gap = first[:, :, None] - first[:, None, :]
  per_prompt = np.where(gap > 0, np.logaddexp(0.0, c.margin * gap), 0.0).sum((1, 2))
  want = per_prompt.mean() / math.comb(k, 2)
  assert c.margin == 0.0 and abs(want - math.log(2)) < 0.1  # log 2, up to tied pairs
  step1 = next(r for r in rm_recs if "train/loss" in r)
  assert step1["step"] == 1
  np.testing.assert_allclose(step1["train/loss"], want, rtol=1e-6)


def test_reward_model_needs_init_from(tmp_path, data_cache):
  proc = launcher.run("reward_model", "configs/reward_model.py:tiny", str(tmp_path),
                      f"--config.data.cache_dir={data_cache}", check=False)
  assert proc.returncode == 2 and "config.init_from is empty" in proc.stderr


def test_negative_reward_margin_is_a_clear_error():
  from configs import reward_model as rm_config
  from llmrl.config import ConfigError
  c = rm_config.get_config("tiny")
  c.margin, c.init_from = -1.0, "/nonexistent/sft"
  with pytest.raises(ConfigError, match="config.margin=-1.0 must be >= 0"):
    reward.make_task(c)
