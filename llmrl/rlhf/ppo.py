"""PPO-RLHF: the policy (from SFT) maximises the reward model's score minus β·KL.

One iteration:
  1. sample responses to a batch of chat prompts with llmrl.decoding.generate
     (policy params, temperature ppo.temperature, stop at <|end|>);
  2. score them in one jitted pass: policy and frozen-reference log-probs of
     the response tokens, critic values, and the frozen reward model's score
     at the last response token (minus a penalty when no <|end|> was produced);
  3. per-token rewards r_t = -β·k1_t (+ score at the last token), GAE(γ, λ),
     whitened advantages (llmrl.rl.ppo_core, the same core classic PPO uses);
  4. a few epochs of minibatch updates of {policy, critic} with the clipped
     surrogate and clipped value loss, through llmrl.train.step's train step;
  5. β follows the adaptive (×2 / ÷2) or proportional KL controller, from the first
     iteration whose rollouts come from an updated policy (during the critic warm-up and
     on the first policy iteration the rollouts' KL is 0 by construction).
PPO-ptx (InstructGPT): with ppo.ptx_coef = γ > 0 each minibatch also carries
ptx_batch packed pretraining sequences (keys ptx_*), and the loss adds
γ times their mean next-token loss under the policy.
Dropout is off in all four models (they are built deterministic).

Sequence layout: [B, P + T] = left-padded prompt (P) then response (T);
the log-prob / value of response token t is read at position P + t - 1.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from llmrl.models import GPT
from llmrl.objectives.lm import causal_lm_loss
from llmrl.rl import ppo_core
from llmrl.rlhf.reward import ScalarHeadModel


class Rollout(NamedTuple):
  """Everything the PPO epochs need, all [B, ...] arrays (one row per response)."""
  seq: jax.Array          # [B, P+T] int32 prompt + response ids
  segment_ids: jax.Array  # [B, P+T] 1 = real token, 0 = padding
  positions: jax.Array    # [B, P+T]
  mask: jax.Array         # [B, T] float32: 1 on response tokens (EOS included)
  old_logp: jax.Array     # [B, T] policy log-probs when sampled
  old_values: jax.Array   # [B, T] critic values
  advantages: jax.Array   # [B, T] whitened
  returns: jax.Array      # [B, T]


class Forward(NamedTuple):
  """The three forward passes PPO needs; each gives per-token outputs [B, P+T, ...].

  policy(params, seq, pos, seg) -> logits; reference(params, ref_params, seq, pos, seg)
  -> logits; critic(params, seq, pos, seg) -> values.
  """
  policy: Callable
  reference: Callable
  critic: Callable


def full_forward(policy: GPT, critic: ScalarHeadModel) -> Forward:
  """Full fine-tuning: params = {"policy", "critic"}, a separate frozen reference tree."""
  return Forward(
      lambda p, *a: policy.apply({"params": p["policy"]}, *a),
      lambda p, ref, *a: policy.apply({"params": ref}, *a),
      lambda p, *a: critic.apply({"params": p["critic"]}, *a))


def lora_forward(policy: GPT, critic: ScalarHeadModel, policy_lora, critic_lora) -> Forward:
  """One frozen base for all three: params = {"base", "policy": {"lora"},
  "critic": {"lora", "head"}}. The reference is the base with adapters off."""
  sg = jax.lax.stop_gradient
  return Forward(
      lambda p, *a: policy_lora.apply(sg(p["base"]), p["policy"]["lora"], *a, model=policy),
      lambda p, ref, *a: policy.apply({"params": sg(p["base"])}, *a),
      lambda p, *a: critic_lora.apply({"backbone": sg(p["base"]), "head": p["critic"]["head"]},
                                      p["critic"]["lora"], *a, model=critic))


def default_config() -> ml_collections.ConfigDict:
  """`config.ppo`: the RLHF PPO hyperparameters."""
  c = ml_collections.ConfigDict()
  c.iterations = 40            # rollout + update rounds
  c.rollout_batch = 32         # prompts per iteration
  c.max_new_tokens = 24        # response length limit
  c.epochs = 2                 # passes over each rollout
  c.minibatches = 2            # per epoch
  c.clip_eps = 0.2             # policy ratio clip
  c.value_clip_eps = 0.2       # value clip
  c.vf_coef = 0.5
  c.entropy_coef = 0.0
  c.gamma = 1.0
  c.lam = 0.95
  c.kl_coef = 0.05             # initial β
  c.kl_target = 1.0            # nats per response; used by the adaptive controller
  c.kl_controller = "adaptive"  # "adaptive" (×2/÷2) | "proportional" (Ziegler) | "fixed"
  c.kl_horizon = 10_000        # proportional controller's horizon (Ziegler et al.: 10k)
  c.kl_coef_min = 1e-3         # the controllers keep β within [kl_coef_min, kl_coef_max]
  c.kl_coef_max = 1.0
  c.kl_estimator = "k1"        # in the reward; k3 is logged as well
  c.missing_eos_penalty = 1.0  # subtracted from the score when no <|end|> is produced
  c.whiten_rewards = False
  c.scale_score = False        # divide RM scores by their std on SFT samples (unit scale)
  c.critic_warmup = 0          # first N iterations train only the critic (policy frozen)
  c.temperature = 1.0          # sampling temperature; log-probs and KL are of logits / T
  c.ptx_coef = 0.0             # PPO-ptx γ: + γ * LM loss on pretraining text (0 = off)
  c.ptx_batch = 8              # pretraining sequences per minibatch update (with ptx_coef)
  c.shift_batches = 4          # rollout batches of SFT samples that set the score shift/scale
  return c


def rng_streams(seed: int) -> dict:
  """One independent key per purpose of the RLHF loop (never reused across purposes).

  "sample": rollouts (fold_in the iteration), "shuffle": minibatch orders (fold_in the
  iteration, then the epoch), "probe": the SFT samples that set the score shift/scale.
  """
  base = jax.random.PRNGKey(seed)
  return {name: jax.random.fold_in(base, i)
          for i, name in enumerate(("sample", "shuffle", "probe"))}


def iteration_keys(streams: dict, it: int, epochs: int) -> tuple[jax.Array, list[jax.Array]]:
  """(rollout key, [one shuffle key per epoch]) of iteration `it`."""
  shuffle = jax.random.fold_in(streams["shuffle"], it)
  return (jax.random.fold_in(streams["sample"], it),
          [jax.random.fold_in(shuffle, e) for e in range(epochs)])


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log softmax(logits)[tokens]: logits [B, T, V], tokens [B, T] -> [B, T] float32."""
  logits = logits.astype(jnp.float32)
  return (jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0]
          - jax.nn.logsumexp(logits, -1))


def entropy(logits: jax.Array) -> jax.Array:
  """Per-position entropy of softmax(logits): [B, T, V] -> [B, T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.sum(jnp.exp(logp) * logp, -1)


def response_view(x: jax.Array, prompt_len: int) -> jax.Array:
  """Per-position outputs [B, P+T, ...] -> the ones that predict response tokens [B, T, ...]."""
  return x[:, prompt_len - 1:-1]


def sequences(prompt_ids, prompt_mask, tokens, lengths):
  """(seq, segment_ids, positions, response mask) for left-padded prompts + responses."""
  t = tokens.shape[1]
  resp_mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)  # [B, T]
  seq = jnp.concatenate([prompt_ids, tokens], 1)  # [B, P+T]
  seg = jnp.concatenate([prompt_mask, resp_mask], 1)  # [B, P+T]
  positions = jnp.maximum(jnp.cumsum(seg, 1) - 1, 0)  # restart at the first real token
  return seq, seg, positions, resp_mask.astype(jnp.float32)


def make_scorer(policy: GPT, critic: ScalarHeadModel, reward_model: ScalarHeadModel,
                c: ml_collections.ConfigDict, end_id: int, prompt_len: int,
                forward: Forward | None = None):
  """Builds score(params, ref_params, rm_params, prompt_ids, prompt_mask, tokens, lengths,
  beta, score_shift, score_scale) -> (Rollout, metrics): step 2 and 3 of the module docstring.

  The RM score enters as (score - score_shift) / score_scale. Log-probs (policy and
  reference) are of logits / c.temperature, the distribution the rollouts sample from."""
  fwd = forward or full_forward(policy, critic)
  temperature = float(c.get("temperature", 1.0))

  def score(params, ref_params, rm_params, prompt_ids, prompt_mask, tokens, lengths,
            beta, score_shift, score_scale=1.0):
    seq, seg, pos, mask = sequences(prompt_ids, prompt_mask, tokens, lengths)
    resp = lambda x: response_view(x, prompt_len)  # noqa: E731
    logits = fwd.policy(params, seq, pos, seg) / temperature  # the sampling distribution
    logp = token_logprobs(resp(logits), tokens) * mask  # [B, T]
    ref_logits = fwd.reference(params, ref_params, seq, pos, seg) / temperature
    ref_logp = token_logprobs(resp(ref_logits), tokens) * mask
    values = resp(fwd.critic(params, seq, pos, seg)) * mask
    last = prompt_len + jnp.maximum(lengths, 1) - 1  # [B] index of the last response token
    raw = jnp.take_along_axis(reward_model.apply({"params": rm_params}, seq, pos, seg),
                              last[:, None], 1)[:, 0]  # [B]
    rm = (raw - score_shift) / score_scale
    finished = jnp.any((tokens == end_id) & (mask > 0), 1)
    scores = rm - c.missing_eos_penalty * (1.0 - finished)
    kl = ppo_core.kl_estimate(logp, ref_logp, c.kl_estimator) * mask  # [B, T]
    t = tokens.shape[1]
    at_end = (jnp.arange(t)[None, :] == (jnp.maximum(lengths, 1) - 1)[:, None]) * mask
    rewards = -beta * kl + at_end * scores[:, None]
    if c.whiten_rewards:
      rewards = ppo_core.whiten(rewards, mask, shift_mean=False)
    adv, returns = ppo_core.gae(rewards, values, at_end, jnp.zeros(len(tokens)),
                                gamma=c.gamma, lam=c.lam, mask=mask)
    adv = ppo_core.whiten(adv, mask)
    seq_kl = jnp.sum(kl, 1)
    metrics = {
        "ppo/score": jnp.mean(scores), "ppo/rm_score": jnp.mean(rm),
        "ppo/rm_score_raw": jnp.mean(raw), "ppo/rm_score_raw_std": jnp.std(raw),
        "ppo/kl_mean": jnp.mean(seq_kl),
        "ppo/kl_k3": jnp.mean(jnp.sum(ppo_core.kl_estimate(logp, ref_logp, "k3") * mask, 1)),
        "ppo/reward": jnp.mean(jnp.sum(rewards, 1)),
        "ppo/response_length": jnp.mean(lengths.astype(jnp.float32)),
        "ppo/finished": jnp.mean(finished.astype(jnp.float32)),
        "ppo/entropy": ppo_core.masked_mean(entropy(resp(logits)), mask),
        "ppo/beta": beta,
    }
    return Rollout(seq, seg, pos, mask, logp, values, adv, returns), metrics

  return score


def make_loss(policy: GPT, critic: ScalarHeadModel, c: ml_collections.ConfigDict,
              prompt_len: int, forward: Forward | None = None):
  """PPO loss over a minibatch of Rollout rows, in the engine's (sum, (weight, sums)) form.

  Log-probs are of logits / c.temperature (as in the scorer); during critic warm-up
  (train_policy = 0) neither the surrogate, the entropy bonus nor PPO-ptx moves the policy.
  """
  fwd = forward or full_forward(policy, critic)
  temperature = float(c.get("temperature", 1.0))

  def loss_fn(params, mb: dict, rng):
    """mb: Rollout rows; optional "train_policy" [B] (0 during critic warm-up)."""
    del rng
    resp = lambda x: response_view(x, prompt_len)  # noqa: E731
    tokens = mb["seq"][:, prompt_len:]
    logits = resp(fwd.policy(params, mb["seq"], mb["positions"], mb["segment_ids"]))
    logits = logits / temperature  # [B, T, vocab]: the sampling distribution
    logp = token_logprobs(logits, tokens)
    mask = mb["mask"]
    pg, stats = ppo_core.clipped_surrogate_loss(logp, mb["old_logp"], mb["advantages"],
                                                clip_eps=c.clip_eps, mask=mask)
    values = resp(fwd.critic(params, mb["seq"], mb["positions"], mb["segment_ids"]))
    vf = ppo_core.value_loss(values, mb["old_values"], mb["returns"],
                             clip_eps=c.value_clip_eps, mask=mask)
    ent = ppo_core.entropy_bonus(entropy(logits), mask)
    policy_on = mb["train_policy"][0] if "train_policy" in mb else 1.0
    loss = policy_on * (pg - c.entropy_coef * ent) + c.vf_coef * vf
    sums = {"policy_loss": pg, "value_loss": vf, "entropy": ent,
            "clip_frac": stats["clip_frac"], "ratio": stats["ratio_mean"],
            "approx_kl": stats["approx_kl"]}
    if c.get("ptx_coef", 0.0) > 0:
      ptx_logits = fwd.policy(params, mb["ptx_inputs"], mb["ptx_positions"],
                              mb["ptx_segment_ids"])  # [b_ptx, L, vocab]
      ptx_sum, (ptx_weight, _) = causal_lm_loss(ptx_logits, mb["ptx_targets"], mb["ptx_weights"])
      sums["ptx_loss"] = ptx_sum / jnp.maximum(ptx_weight, 1.0)
      loss = loss + policy_on * c.ptx_coef * sums["ptx_loss"]
    return loss, (jnp.float32(1.0), sums)

  return loss_fn


def update_beta(beta: float, kl: float, c: ml_collections.ConfigDict, n_steps: int) -> float:
  """Next β from the configured KL controller, kept within [kl_coef_min, kl_coef_max]."""
  if c.kl_controller == "adaptive":
    beta = float(ppo_core.adaptive_kl_update(beta, kl, c.kl_target))
  elif c.kl_controller == "proportional":
    beta = float(ppo_core.proportional_kl_update(beta, kl, c.kl_target, n_steps=n_steps,
                                                 horizon=c.get("kl_horizon", 10_000)))
  else:
    return beta
  return min(max(beta, c.get("kl_coef_min", 0.0)), c.get("kl_coef_max", float("inf")))
