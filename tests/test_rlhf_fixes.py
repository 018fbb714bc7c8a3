"""The PPO-RLHF fixes of issue 23, each checked against an independent derivation.

PPO-ptx during critic warm-up, β frozen during warm-up, log-probs at temperature T,
independent RNG streams, pooled score moments, and an exact resume after SIGKILL.
"""

import json
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.models import GPT, GPTConfig
from llmrl.rlhf import loop, ppo
from llmrl.rlhf.reward import ScalarHeadModel
from llmrl.train.checkpoint import load_params
from tests import launcher

P, T, B, END, V = 6, 5, 4, 3, 40


@pytest.fixture(scope="module")
def setup():
  cfg = GPTConfig(vocab_size=V, max_len=16, num_layers=2, d_model=32, num_heads=4, d_ff=64)
  policy, critic = GPT(cfg), ScalarHeadModel(cfg)
  x = jnp.zeros((1, P + T), jnp.int32)
  params = {"policy": nn.meta.unbox(policy.init(jax.random.PRNGKey(0), x)["params"]),
            "critic": nn.meta.unbox(critic.init(jax.random.PRNGKey(1), x)["params"])}
  params["critic"]["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), (32, 1))
  ref = nn.meta.unbox(policy.init(jax.random.PRNGKey(7), x)["params"])  # another model
  rng = np.random.RandomState(0)
  ids = rng.randint(5, V, (B, P)).astype(np.int32)
  mask = np.ones((B, P), np.int32)
  mask[0, :3] = 0  # left padding
  ids[mask == 0] = 0
  tokens = rng.randint(5, V, (B, T)).astype(np.int32)
  lengths = np.array([5, 3, 2, 5], np.int32)
  tokens[1, 2], tokens[2, 1] = END, END
  tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0
  return policy, critic, params, ref, (ids, mask, tokens, lengths)


def rollout(setup, c, beta=0.1):
  policy, critic, params, ref, (ids, mask, tokens, lengths) = setup
  fn = jax.jit(ppo.make_scorer(policy, critic, critic, c, END, P))
  return fn(params, ref, params["critic"], ids, mask, tokens, lengths, jnp.float32(beta),
            jnp.float32(0.0), jnp.float32(1.0))


def numpy_logprobs(model, params, ids, mask, tokens, lengths, temperature):
  """log softmax(logits / T) of each response token, from a plain forward pass: [B, T]."""
  seq = np.concatenate([ids, tokens], 1)
  resp = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  seg = np.concatenate([mask, resp], 1)
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0)
  logits = np.asarray(model.apply({"params": params}, seq, pos, seg), np.float64) / temperature
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  out = np.zeros((B, T))
  for b in range(B):
    for t in range(lengths[b]):
      out[b, t] = logp[b, P + t - 1, tokens[b, t]]  # the position that predicts token t
  return out, resp


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_logprobs_and_kl_are_of_the_sampling_distribution(setup, temperature):
  policy, _, params, ref, (ids, mask, tokens, lengths) = setup
  c = ppo.default_config()
  c.temperature = temperature
  roll, metrics = rollout(setup, c)
  want, resp = numpy_logprobs(policy, params["policy"], ids, mask, tokens, lengths, temperature)
  want_ref, _ = numpy_logprobs(policy, ref, ids, mask, tokens, lengths, temperature)
  np.testing.assert_allclose(np.asarray(roll.old_logp), want, atol=2e-5)
  kl = ((want - want_ref) * resp).sum(1).mean()  # k1, summed over each response
  np.testing.assert_allclose(float(metrics["ppo/kl_mean"]), kl, rtol=1e-4, atol=1e-5)
  # The loss sees the same distribution: before any update the ratio is exactly 1.
  loss_fn = ppo.make_loss(policy, setup[1], c, P)
  _, (_, sums) = loss_fn(params, dict(roll._asdict()), None)
  np.testing.assert_allclose(float(sums["ratio"]), 1.0, atol=1e-6)


def ptx_rows(n=2, length=P + T):
  rng = np.random.RandomState(1)
  x = rng.randint(5, V, (n, length + 1)).astype(np.int32)
  return {"ptx_inputs": x[:, :-1], "ptx_targets": x[:, 1:],
          "ptx_weights": np.ones((n, length), np.float32),
          "ptx_positions": np.tile(np.arange(length, dtype=np.int32), (n, 1)),
          "ptx_segment_ids": np.ones((n, length), np.int32)}


def test_ptx_does_not_move_the_policy_during_critic_warmup(setup):
  policy, critic, params, _, _ = setup
  c = ppo.default_config()
  c.ptx_coef = 4.0
  roll, _ = rollout(setup, c)
  loss_fn = ppo.make_loss(policy, critic, c, P)
  norms = {}
  for on in (0.0, 1.0):
    mb = {**roll._asdict(), **ptx_rows(), "train_policy": jnp.full(B, on)}
    grads = jax.grad(lambda p, mb=mb: loss_fn(p, mb, None)[0])(params)
    norms[on] = {k: float(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(v)))
                 for k, v in grads.items()}
  assert norms[0.0]["policy"] == 0.0  # warm-up: neither PPO nor ptx reaches the policy
  assert norms[0.0]["critic"] > 0 and norms[1.0]["policy"] > 0


def test_rng_streams_never_share_a_key():
  streams = ppo.rng_streams(1)
  keys = [tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in streams.values()]
  for it in range(200):
    sample, shuffles = ppo.iteration_keys(streams, it, 4)
    keys += [tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in [sample, *shuffles]]
  keys += [tuple(np.asarray(jax.random.key_data(jax.random.fold_in(streams["probe"], i)))
                 .tolist()) for i in range(8)]
  assert len(keys) == len(set(keys)) == 3 + 200 * 5 + 8


def test_score_moments_pool_every_probe_sample():
  rng = np.random.RandomState(0)
  batches = [rng.normal(i, 1 + i, 16) for i in range(4)]
  seen = []

  def fake_rollout(params, batch, key, beta, shift, scale):
    i = len(seen)
    seen.append((tuple(np.asarray(jax.random.key_data(key)).tolist()), batch["index"].tolist()))
    return None, (None, {"ppo/rm_score_raw": batches[i].mean(),
                         "ppo/rm_score_raw_std": batches[i].std()})

  c = ppo.default_config()
  c.rollout_batch, c.shift_batches = 16, 4
  prompts = {"ids": np.zeros((40, 3), np.int32), "index": np.arange(40, dtype=np.int32)}
  mean, std = loop.score_moments(fake_rollout, None, prompts, c, 0, jax.random.PRNGKey(3))
  every = np.concatenate(batches)
  np.testing.assert_allclose([mean, std], [every.mean(), every.std()], rtol=1e-10)
  assert len({k for k, _ in seen}) == 4  # one sampling key per probe batch


# ----------------------------------------------------------------------------------------
# The RLHF stage end to end: β and the policy frozen during warm-up; exact resume.

ITERATIONS, WARMUP, KL_COEF = 8, 2, 0.05


def rlhf_overrides(stages, cache):
  return (f"--config.sft_from={stages}/sft", f"--config.rm_from={stages}/reward_model",
          f"--config.data.cache_dir={cache}", f"--config.ppo.iterations={ITERATIONS}",
          f"--config.ppo.critic_warmup={WARMUP}", f"--config.ppo.kl_coef={KL_COEF}",
          "--config.ppo.ptx_coef=0.5", "--config.ppo.temperature=0.9",
          "--config.checkpoint_every=2", "--config.keep_checkpoints=10",
          "--config.optim.learning_rate=1e-3")


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference_run(chatgpt_tiny, data_cache, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("rlhf_ref"))
  launcher.run("rlhf", "configs/rlhf.py:tiny", wd, *rlhf_overrides(chatgpt_tiny, data_cache))
  return wd


def test_warmup_freezes_beta_and_the_policy(reference_run, chatgpt_tiny):
  recs = records(reference_run)
  assert [r["step"] for r in recs] == list(range(1, ITERATIONS + 1))
  assert [r["ppo/policy_on"] for r in recs] == [0.0] * WARMUP + [1.0] * (ITERATIONS - WARMUP)
  # β is the initial one through the warm-up and the first policy iteration, whose
  # rollouts the frozen policy sampled (KL 0); then the controller moves it.
  assert [r["ppo/kl_mean"] for r in recs[:WARMUP + 1]] == [0.0] * (WARMUP + 1)
  beta0 = float(np.float32(KL_COEF))  # logged as the float32 the scorer was given
  assert [r["ppo/beta"] for r in recs[:WARMUP + 2]] == [beta0] * (WARMUP + 2)
  assert recs[WARMUP + 2]["ppo/beta"] != beta0
  _, sft = load_params(os.path.join(chatgpt_tiny, "sft"))
  _, warm = load_params(reference_run, step=WARMUP)
  _, last = load_params(reference_run)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), sft, warm["policy"])
  assert all(jax.tree.leaves(same)), "the policy moved during the critic warm-up"
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, sft, last["policy"])))
  _, rm = load_params(os.path.join(chatgpt_tiny, "reward_model"))  # the critic's start
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, rm, warm["critic"])))


def test_sigkill_mid_stage_resumes_to_the_same_result(reference_run, chatgpt_tiny,
                                                      data_cache, tmp_path):
  run = str(tmp_path / "run")
  args = rlhf_overrides(chatgpt_tiny, data_cache)
  proc = launcher.start("rlhf", "configs/rlhf.py:tiny", run, *args)
  metrics, deadline = os.path.join(run, "metrics.jsonl"), time.time() + 600
  saved = os.path.join(run, "checkpoints", "4")
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).readlines()) >= 5 and os.path.isdir(saved):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 5 <= len(open(metrics).readlines()) < ITERATIONS
  out = launcher.run("rlhf", "configs/rlhf.py:tiny", run, *args)
  assert "resumed RLHF" in out.stderr
  assert records(run) == records(reference_run)  # every metric of every iteration, exactly
  _, want = load_params(reference_run)
  _, got = load_params(run)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, want, got)))
  for name in ("eval_chat.json",):
    with open(os.path.join(run, name)) as f, open(os.path.join(reference_run, name)) as g:
      assert json.load(f) == json.load(g)


def test_bootstrap_resamples_facts_and_pairs_policies():
  from llmrl.rlhf import evaluate
  rng = np.random.RandomState(0)
  facts = [f"f{i}" for i in range(60)]
  ask = [f for f in facts for _ in range(2)]  # every fact in two wordings
  scores = rng.choice([1.0, 0.0, -4.0], size=len(ask), p=[0.5, 0.3, 0.2])
  records = [{"fact": f, "known": True, "outcome": {1.0: "correct", 0.0: "declined",
              -4.0: "wrong"}[s], "hedged": False, "score": s} for f, s in zip(ask, scores)]
  out = evaluate.summarize(records)
  # An independent loop: draw 60 facts with replacement, average their questions' scores.
  per_fact = {f: [] for f in facts}
  for f, s in zip(ask, scores):
    per_fact[f].append(s)
  other = np.random.default_rng(123)
  boot = [np.mean([x for f in other.choice(facts, len(facts)) for x in per_fact[f]])
          for _ in range(4000)]
  np.testing.assert_allclose(out["true_reward_ci"], np.quantile(boot, [0.05, 0.95]), atol=0.04)
  answered = {f: [] for f in facts}  # the answer rate's interval, from the same kind of loop
  for f, s in zip(ask, scores):
    answered[f].append(float(s != 0.0))
  rates = [np.mean([x for f in other.choice(facts, len(facts)) for x in answered[f]])
           for _ in range(4000)]
  np.testing.assert_allclose(out["answer_rate_ci"], np.quantile(rates, [0.05, 0.95]), atol=0.04)
  assert out["true_reward"] == pytest.approx(scores.mean())
  assert (out["num_questions"], out["num_facts"]) == (120, 60)
  # The paired difference against a policy that declines everything is the policy's reward.
  declined = evaluate.baselines(records)["always_decline"]
  d = evaluate.paired_difference(records, declined)
  assert d["difference"] == pytest.approx(scores.mean())
  np.testing.assert_allclose(d["difference_ci"], out["true_reward_ci"])
  with pytest.raises(ValueError, match="same questions"):
    evaluate.paired_difference(records, declined[::-1])
