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


def monte_carlo_config(c):
  """c with γ = λ = 1, so returns_t = r_t + ... + r_{end}, whatever the critic's values."""
  mc = ml_collections.ConfigDict(c.to_dict())
  mc.gamma, mc.lam = 1.0, 1.0
  return mc


def test_kl_is_exactly_zero_against_itself(setup):
  _, metrics = score(setup)
  assert float(metrics["ppo/kl_mean"]) == 0.0 and float(metrics["ppo/kl_k3"]) == 0.0


def test_rewards_are_score_at_eos_minus_beta_k1_against_another_reference(setup):
  """r_t = -β·(log π(y_t) - log π_ref(y_t)) + [t = last] · (RM score - missing-EOS penalty),
  derived here in numpy from the two models' logits (log-prob of response token t read at
  position P + t - 1) and compared to the scorer's per-token rewards, recovered from its
  γ = λ = 1 returns (returns_t = sum of rewards from t on)."""
  cfg, policy, critic, params, (ids, mask, tokens, lengths), c = setup
  beta = 0.5
  leaves, tree = jax.tree.flatten(params["policy"])
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  ref = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                  for x, k in zip(leaves, keys)])
  fn = jax.jit(ppo.make_scorer(policy, critic, critic, monte_carlo_config(c), END, P))
  roll, m = fn(params, ref, params["critic"], ids, mask, tokens, lengths, jnp.float32(beta),
               jnp.float32(0.0), jnp.float32(1.0))
  # The model inputs, built directly: prompt padding is on the left, positions count real tokens.
  seq = np.concatenate([ids, tokens], 1)
  resp = np.arange(T)[None, :] < lengths[:, None]  # [B, T]
  seg = np.concatenate([mask, resp], 1).astype(np.int32)
  pad = P - mask.sum(1)
  pos = np.maximum(np.arange(P + T)[None, :] - pad[:, None], 0).astype(np.int32)

  def response_logp(p):  # [B, T] float64: log softmax at P + t - 1, gathered at token t
    logits = np.asarray(policy.apply({"params": p}, seq, pos, seg), np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))  # [B, P+T, V]
    return np.stack([logp[np.arange(B), P + t - 1, tokens[:, t]] for t in range(T)], 1) * resp

  k1 = response_logp(params["policy"]) - response_logp(ref)  # [B, T]
  assert np.abs(k1[resp]).mean() > 0.02  # a real KL: its sign and placement matter
  rm = np.asarray(critic.apply({"params": params["critic"]}, seq, pos, seg), np.float64)
  eos = np.array([END in tokens[i, :lengths[i]] for i in range(B)])
  scores = rm[np.arange(B), P + lengths - 1] - c.missing_eos_penalty * (1 - eos)
  rewards = -beta * k1
  rewards[np.arange(B), lengths - 1] += scores
  to_go = np.cumsum(rewards[:, ::-1], 1)[:, ::-1] * resp
  np.testing.assert_allclose(np.asarray(roll.returns), to_go, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(roll.old_logp), response_logp(params["policy"]),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(m["ppo/kl_mean"]), k1.sum(1).mean(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(m["ppo/reward"]), rewards.sum(1).mean(), rtol=1e-4)


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
  # A left-padded row scores as the same prompt run alone without padding: its RM score
  # (the γ = λ = 1 return at t = 0 with β = 0), log-probs and values agree.
  mc = monte_carlo_config(c)
  padded, _ = jax.jit(ppo.make_scorer(policy, critic, critic, mc, END, P))(
      params, params["policy"], params["critic"], ids, mask, tokens, lengths, jnp.float32(0.0),
      jnp.float32(0.0), jnp.float32(1.0))
  for i in (0, 1):
    n = int(mask[i].sum())
    assert n < P  # the row really is padded
    alone, am = jax.jit(ppo.make_scorer(policy, critic, critic, mc, END, n))(
        params, params["policy"], params["critic"], ids[i:i + 1, P - n:],
        np.ones((1, n), np.int32), tokens[i:i + 1], lengths[i:i + 1], jnp.float32(0.0),
        jnp.float32(0.0), jnp.float32(1.0))
    penalty = c.missing_eos_penalty * (1 - finished[i])
    np.testing.assert_allclose(float(padded.returns[i, 0]) + penalty,
                               float(am["ppo/rm_score_raw"]), atol=1e-5)
    for field in ("returns", "old_logp", "old_values"):
      np.testing.assert_allclose(np.asarray(getattr(padded, field))[i],
                                 np.asarray(getattr(alone, field))[0], atol=1e-5, err_msg=field)


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


def test_chatgpt_smoke(chatgpt_tiny, data_cache):
  """The tiny pipeline's report, recomputed from what each stage wrote."""
  from llmrl import data as data_lib
  from llmrl.data import labeler
  from tests.conftest import CHATGPT_TINY_OVERRIDES
  wd = chatgpt_tiny
  log = open(os.path.join(wd, "run.log")).read()
  assert "stage 4/4: rlhf" in log and "knowledge probe (decline_below=0.1)" in log
  ppo_recs = [json.loads(line) for line in open(os.path.join(wd, "rlhf", "metrics.jsonl"))]
  ptx = [r["train/ptx_loss"] for r in ppo_recs if "train/ptx_loss" in r]
  vocab = data_lib.load_tokenizer(os.path.join(wd, "rlhf", "tokenizer.model")).vocab_size
  # PPO-ptx ran: the policy's LM loss on pretraining text, well below a uniform guess.
  assert ptx and all(0 < x < np.log(vocab) for x in ptx)
  report = json.load(open(os.path.join(wd, "report.json")))
  cfg = ml_collections.ConfigDict(json.load(open(os.path.join(wd, "rlhf", "config.json"))))
  questions = (data_lib.examples(cfg.data, "eval_known")
               + data_lib.examples(cfg.data, "eval_unknown"))
  n_known = sum(ex["known"] for ex in questions)
  for stage, name in (("pretrain", "eval_fewshot.json"), ("sft", "eval_chat.json"),
                      ("rlhf", "eval_chat.json")):
    r, ev = report[stage], json.load(open(os.path.join(wd, stage, name)))
    answers = [rec["answer"] for rec in ev["records"]]
    assert r["num_questions"] == len(questions) == len(answers)
    # Re-scored here from the split's examples and the stored answers.
    scores = [labeler.score(ex, a) for ex, a in zip(questions, answers)]
    outcomes = [labeler.classify(ex, a).outcome for ex, a in zip(questions, answers)]
    assert r["true_reward"] == pytest.approx(np.mean(scores), abs=1e-12)
    right = sum(o == "correct" for o, ex in zip(outcomes, questions) if ex["known"])
    assert r["known_accuracy"] == pytest.approx(right / n_known, abs=1e-12)
    made_up = sum(o != "declined" for o, ex in zip(outcomes, questions) if not ex["known"])
    assert r["hallucination_rate"] == pytest.approx(made_up / (len(questions) - n_known))
    assert r["answer_rate"] == pytest.approx(np.mean([o != "declined" for o in outcomes]))
    lo, hi = r["true_reward_ci"]
    assert lo <= r["true_reward"] <= hi and lo < hi or lo == hi == r["true_reward"]
    if stage == "sft":  # the oracle keeps SFT's right answers and declines the rest
      oracle = np.mean([s if o == "correct" else 0.0 for s, o in zip(scores, outcomes)])
      assert report["oracle_decline"]["true_reward"] == pytest.approx(oracle, abs=1e-12)
  gain = report["rlhf"]["minus_sft"]  # paired over the same questions
  assert gain["difference"] == pytest.approx(report["rlhf"]["true_reward"]
                                             - report["sft"]["true_reward"], abs=1e-12)
  decline = report["always_decline"]
  assert (decline["true_reward"], decline["true_reward_ci"], decline["answer_rate"],
          decline["hallucination_rate"]) == (0.0, [0.0, 0.0], 0.0, 0.0)
  assert decline["num_questions"] == report["oracle_decline"]["num_questions"] == len(questions)
  # KL: the mean over the iterations that trained the policy, recomputed from metrics.jsonl.
  kls = [r["ppo/kl_mean"] for r in ppo_recs if r["ppo/policy_on"]]
  assert report["ppo"]["kl_mean"] == pytest.approx(np.mean(kls), abs=1e-12)
  assert report["ppo"]["kl_last"] == kls[-1] and report["ppo"]["kl_target"] == 1.0
  rm = report["reward_model"]
  assert {"heldout_accuracy", "surface_baseline_heldout_accuracy"} <= set(rm)
  for name in ("report.md", "losses.png", "ppo.png"):
    assert os.path.getsize(os.path.join(wd, name)) > 0
  assert "| always_decline | 0.000 [0.000, 0.000] |" in open(os.path.join(wd, "report.md")).read()
  # Re-running the same command resumes: every stage is already complete, same report.
  again = launcher.run("chatgpt", "configs/chatgpt.py:tiny", wd, f"--config.cache_dir={data_cache}",
                       *CHATGPT_TINY_OVERRIDES)
  assert "resumed" in again.stderr
  assert json.load(open(os.path.join(wd, "report.json"))) == report
