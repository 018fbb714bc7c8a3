"""RLHF sanity checks (KL 0 / ratio 1 before updating, lr 0, padding, whitening) and the pipeline."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from llmrl.models import GPT, GPTConfig
from llmrl.rl import ppo_core
from llmrl.rlhf import ppo
from llmrl.rlhf.reward import ScalarHeadModel
from llmrl.train import optim
from llmrl.train.step import TrainState, make_train_step
from tests import launcher

P, T, B, END = 6, 5, 4, 3


@pytest.fixture(scope="module")
def setup():
  cfg = GPTConfig(vocab_size=40, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=64)
  policy, critic = GPT(cfg), ScalarHeadModel(cfg)
  x = jnp.zeros((1, P + T), jnp.int32)
  params = {"policy": nn.meta.unbox(policy.init(jax.random.PRNGKey(0), x)["params"]),
            "critic": nn.meta.unbox(critic.init(jax.random.PRNGKey(1), x)["params"])}
  params["critic"]["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), (32, 1))
  rng = np.random.RandomState(0)
  prompt_ids = rng.randint(5, 40, (B, P)).astype(np.int32)
  prompt_mask = np.ones((B, P), np.int32)
  prompt_mask[0, :3] = 0  # left padding
  prompt_mask[1, :1] = 0
  prompt_ids[prompt_mask == 0] = 0
  tokens = rng.randint(5, 40, (B, T)).astype(np.int32)
  lengths = np.array([5, 3, 2, 5], np.int32)
  tokens[1, 2], tokens[2, 1] = END, END
  tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0
  c = ppo.default_config()
  return cfg, policy, critic, params, (prompt_ids, prompt_mask, tokens, lengths), c


def score(setup, beta=0.1, shift=0.0, scale=1.0):
  cfg, policy, critic, params, (ids, mask, tokens, lengths), c = setup
  fn = jax.jit(ppo.make_scorer(policy, critic, critic, c, END, P))
  return fn(params, params["policy"], params["critic"], ids, mask, tokens, lengths,
            jnp.float32(beta), jnp.float32(shift), jnp.float32(scale))


def test_kl_is_exactly_zero_against_itself(setup):
  _, metrics = score(setup)
  assert float(metrics["ppo/kl_mean"]) == 0.0 and float(metrics["ppo/kl_k3"]) == 0.0


def test_ratio_is_one_before_the_first_update_and_lr0_changes_nothing(setup):
  cfg, policy, critic, params, _, c = setup
  roll, _ = score(setup)
  oc = optim.default_config()
  oc.learning_rate, oc.warmup_steps, oc.schedule = 0.0, 0, "constant"
  tx, sched = optim.make_optimizer(oc, 10)
  step = jax.jit(make_train_step(ppo.make_loss(policy, critic, c, P), tx, sched))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0))
  rows = dict(roll._asdict())
  state, m = step(state, rows)
  np.testing.assert_allclose(float(m["train/ratio"]), 1.0, atol=1e-6)
  assert float(m["train/clip_frac"]) == 0.0
  assert abs(float(m["train/approx_kl"])) < 1e-7
  # lr = 0: params unchanged, so a second pass sees log-ratio ~ 0 again.
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  _, m2 = step(state, rows)
  np.testing.assert_allclose(float(m2["train/ratio"]), 1.0, atol=1e-6)


def test_score_read_at_last_response_token_with_left_padding(setup):
  cfg, policy, critic, params, (ids, mask, tokens, lengths), c = setup
  seq, seg, pos, resp_mask = ppo.sequences(jnp.asarray(ids), jnp.asarray(mask),
                                           jnp.asarray(tokens), jnp.asarray(lengths))
  # Positions restart at the first real prompt token; padding has segment 0.
  assert pos[0, 3] == 0 and pos[0, P] == 3 and seg[0, :3].sum() == 0
  np.testing.assert_array_equal(resp_mask.sum(1), lengths)
  roll, m = score(setup, beta=0.0)
  values = critic.apply({"params": params["critic"]}, seq, pos, seg)  # [B, P+T]
  expected = values[jnp.arange(B), P + lengths - 1]
  finished = np.array([(tokens[i, :lengths[i]] == END).any() for i in range(B)])
  expected = expected - c.missing_eos_penalty * (1 - finished)
  # With beta 0 the only reward is the score at the last response token.
  np.testing.assert_allclose(float(m["ppo/score"]), float(jnp.mean(expected)), rtol=1e-5)
  np.testing.assert_allclose(float(m["ppo/reward"]), float(jnp.mean(expected)), rtol=1e-5)


def test_score_shift_and_scale(setup):
  """ppo.scale_score: the RM score enters as (raw - shift) / scale; raw mean and std logged."""
  cfg, policy, critic, params, (ids, mask, tokens, lengths), c = setup
  _, m = score(setup, beta=0.0, shift=0.7, scale=2.5)
  seq, seg, pos, _ = ppo.sequences(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(tokens),
                                   jnp.asarray(lengths))
  values = np.asarray(critic.apply({"params": params["critic"]}, seq, pos, seg), np.float64)
  raw = values[np.arange(B), P + lengths - 1]
  np.testing.assert_allclose(float(m["ppo/rm_score_raw"]), raw.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m["ppo/rm_score_raw_std"]), raw.std(), rtol=1e-4)
  np.testing.assert_allclose(float(m["ppo/rm_score"]), ((raw - 0.7) / 2.5).mean(), rtol=1e-5,
                             atol=1e-6)


def test_critic_warmup_freezes_the_policy(setup):
  """train_policy = 0 (ppo.critic_warmup iterations): only the critic moves."""
  cfg, policy, critic, params, _, c = setup
  rows = dict(score(setup)[0]._asdict())
  loss = ppo.make_loss(policy, critic, c, P)
  frozen = {**rows, "train_policy": np.zeros(B, np.float32)}
  grads = jax.grad(lambda p: loss(p, frozen, None)[0])(params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["policy"]))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["critic"])) > 0.0
  on = jax.grad(lambda p: loss(p, {**rows, "train_policy": np.ones(B, np.float32)}, None)[0])
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(on(params)["policy"])) > 0.0


def test_advantages_are_whitened_over_response_tokens(setup):
  roll, _ = score(setup)
  mask = np.asarray(roll.mask) > 0
  adv = np.asarray(roll.advantages)
  np.testing.assert_allclose(adv[mask].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(adv[mask].std(ddof=1), 1.0, atol=1e-4)
  assert np.all(adv[~mask] == 0)
  x = jnp.asarray([[1.0, 2.0, 3.0, 100.0]])
  w = ppo_core.whiten(x, jnp.asarray([[1.0, 1.0, 1.0, 0.0]]), shift_mean=False)
  np.testing.assert_allclose(float(w[0, :3].mean()), 2.0, rtol=1e-5)  # mean kept


def test_ptx_adds_gamma_times_the_pretraining_lm_loss(setup):
  """PPO-ptx: loss = PPO loss + γ * mean next-token NLL of the pretraining rows."""
  cfg, policy, critic, params, _, c = setup
  rows = dict(score(setup)[0]._asdict())
  rng = np.random.RandomState(1)
  n, length = 3, 8
  ptx = {"ptx_inputs": rng.randint(5, 40, (n, length)).astype(np.int32),
         "ptx_targets": rng.randint(5, 40, (n, length)).astype(np.int32),
         "ptx_positions": np.tile(np.arange(length, dtype=np.int32), (n, 1)),
         "ptx_segment_ids": np.ones((n, length), np.int32),
         "ptx_weights": (rng.rand(n, length) > 0.3).astype(np.float32)}
  with_ptx = ml_collections.ConfigDict(c.to_dict())
  with_ptx.ptx_coef = 0.5
  base, _ = ppo.make_loss(policy, critic, c, P)(params, rows, None)
  loss, (_, sums) = ppo.make_loss(policy, critic, with_ptx, P)(params, {**rows, **ptx}, None)
  logits = policy.apply({"params": params["policy"]}, ptx["ptx_inputs"], ptx["ptx_positions"],
                        ptx["ptx_segment_ids"])
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), -1))
  nll = -np.take_along_axis(logp, ptx["ptx_targets"][..., None], -1)[..., 0]
  want = (nll * ptx["ptx_weights"]).sum() / ptx["ptx_weights"].sum()
  np.testing.assert_allclose(float(sums["ptx_loss"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(base) + 0.5 * want, rtol=1e-5)


def test_bad_rlhf_config():
  from llmrl.config import ConfigError
  from llmrl.rlhf import loop
  c = ml_collections.ConfigDict({"sft_from": "", "rm_from": "x", "ppo": ppo.default_config()})
  with pytest.raises(ConfigError, match="sft_from"):
    loop.validate(c)
  c.sft_from, c.ppo.minibatches = "x", 3
  with pytest.raises(ConfigError, match="minibatches"):
    loop.validate(c)
  c.ppo.minibatches, c.ppo.critic_warmup = 2, c.ppo.iterations
  with pytest.raises(ConfigError, match="critic_warmup"):
    loop.validate(c)
  c.ppo.minibatches, c.ppo.ptx_coef = 2, -1.0
  with pytest.raises(ConfigError, match="ptx_coef=-1.0 must be >= 0"):
    loop.validate(c)
  c.ppo.ptx_coef, c.ppo.kl_coef_max = 0.0, 0.01
  with pytest.raises(ConfigError, match=r"kl_coef=0.05 must lie in \[kl_coef_min, kl_coef_max\]"):
    loop.validate(c)


def test_kl_controllers_keep_beta_in_range():
  c = ppo.default_config()
  c.kl_coef_min, c.kl_coef_max, c.kl_target = 0.01, 0.4, 1.0
  beta = 0.05
  for _ in range(10):  # KL far above target: doubles, then stops at the ceiling
    beta = ppo.update_beta(beta, 10.0, c, 32)
  assert beta == 0.4
  for _ in range(10):  # KL far below: halves down to the floor
    beta = ppo.update_beta(beta, 0.0, c, 32)
  assert beta == 0.01
  c.kl_controller, c.kl_horizon = "proportional", 100
  assert ppo.update_beta(0.1, 2.0, c, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
  assert ppo.update_beta(0.399, 2.0, c, 1000) == 0.4
  c.kl_controller = "fixed"
  assert ppo.update_beta(0.1, 10.0, c, 32) == 0.1


def test_chatgpt_smoke(tmp_path, data_cache):
  wd = str(tmp_path / "cg")
  ptx = "--config.rlhf.ppo.ptx_coef=0.5"  # PPO-ptx on: pretraining rows in every update
  probe = "--config.sft.decline_below=0.1"  # knowledge-aware SFT, as in the default
  out = launcher.run("chatgpt", "configs/chatgpt.py:tiny", wd, f"--config.cache_dir={data_cache}",
                     ptx, probe)
  assert "stage 4/4: rlhf" in out.stderr
  assert "knowledge probe (decline_below=0.1)" in out.stderr
  ppo_recs = [json.loads(line) for line in open(os.path.join(wd, "rlhf", "metrics.jsonl"))]
  assert all(np.isfinite(r["train/ptx_loss"]) and r["train/ptx_loss"] > 0 for r in ppo_recs
             if "train/ptx_loss" in r) and any("train/ptx_loss" in r for r in ppo_recs)
  report = json.load(open(os.path.join(wd, "report.json")))
  for stage in ("pretrain", "sft", "rlhf"):
    assert set(report[stage]) == {"true_reward", "known_accuracy", "hallucination_rate"}
    assert -4.0 <= report[stage]["true_reward"] <= 1.0
  assert 0.0 <= report["reward_model"]["heldout_accuracy"] <= 1.0
  if "unseen_fact_accuracy" in report["reward_model"]:
    assert 0.0 <= report["reward_model"]["unseen_fact_accuracy"] <= 1.0
  assert report["ppo"]["kl_target"] == 1.0 and report["ppo"]["kl_mean"] is not None
  for name in ("report.md", "losses.png", "ppo.png"):
    assert os.path.getsize(os.path.join(wd, name)) > 0
  # Re-running the same command resumes: every stage is already complete.
  again = launcher.run("chatgpt", "configs/chatgpt.py:tiny", wd, f"--config.cache_dir={data_cache}",
                       ptx, probe)
  assert "resumed" in again.stderr
