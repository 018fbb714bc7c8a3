"""Reward model from K-way ranked responses (InstructGPT), and the scalar-head model.

`ScalarHeadModel` is a GPT backbone plus a linear head giving one scalar per
token: the reward model reads it at each response's final token (<|end|>);
the PPO critic (initialised from the reward model) reads it at every token.

Loss (Ouyang et al. 2022, eq. 1): for one prompt with K ranked responses,
  loss = -1/C(K,2) * sum over pairs (w better than l) of log sigmoid(r_w - r_l),
all C(K,2) comparisons of a prompt in the same batch element. Pairs whose
labeler scores tie carry no comparison (they add nothing to the sum).
With config.margin = m > 0 each comparison becomes log sigmoid(r_w - r_l -
m * (s_w - s_l)), s the labeler's scores (the margin loss of Touvron et al.
2023, Llama 2, with the margin set by how much better the labeler scored w):
rankings alone fix only the order of the rewards, the margin also makes
their gaps follow the labeler's, e.g. that a wrong answer (-4) is much
further below "I don't know" (0) than a right one (1) is above it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl import data as data_lib
from llmrl.adapters import tuning as tuning_lib
from llmrl.config import ConfigError
from llmrl.models import GPT, GPTConfig, flops_per_token
from llmrl.models.attention import SHARED_SEGMENT
from llmrl.rlhf.sft import inherit
from llmrl.tasks import lm
from llmrl.train.trainer import Task, local_batch_size

log = logging.getLogger("llmrl")


class ScalarHeadModel(nn.Module):
  """GPT backbone + linear head: input_ids [b, l] -> scalars [b, l] (float32)."""
  config: GPTConfig

  def setup(self):
    self.backbone = GPT(self.config)
    self.head = nn.Dense(
        1, dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))

  def __call__(self, input_ids, positions=None, segment_ids=None, deterministic=True):
    h = self.backbone.hidden_states(input_ids, positions, segment_ids, deterministic)
    return self.head(h.astype(jnp.float32))[..., 0]  # [b, l]


def read_at(values: jax.Array, index: jax.Array) -> jax.Array:
  """values [b, l] at per-row positions index [b] -> [b]."""
  return jnp.take_along_axis(values, index[:, None], axis=1)[:, 0]


def ranking_loss(rewards: jax.Array, scores: jax.Array, margin: float = 0.0):
  """InstructGPT ranking loss (optionally with a score-gap margin) in the engine's
  (sum, (weight, sums)) form.

  rewards, scores: [batch, K]. Weight = number of prompts. Also sums the
  fraction of comparisons each prompt orders correctly ("pair_accuracy").
  """
  k = rewards.shape[1]
  diff = rewards[:, :, None] - rewards[:, None, :]  # [b, K, K]: r_i - r_j
  gap = scores[:, :, None] - scores[:, None, :]  # [b, K, K]: s_i - s_j
  better = (gap > 0).astype(jnp.float32)  # i ranked above j
  per_prompt = -jnp.sum(jax.nn.log_sigmoid(diff - margin * gap) * better,
                        (1, 2)) / math.comb(k, 2)
  pairs = jnp.maximum(better.sum((1, 2)), 1.0)
  correct = jnp.sum((diff > 0) * better, (1, 2)) / pairs
  return jnp.sum(per_prompt), (jnp.float32(rewards.shape[0]),
                               {"pair_accuracy": jnp.sum(correct)})


def preference_arrays(examples: list[dict], tok, seq_len: int) -> dict:
  """[N, K, seq_len] chats of each prompt with each of its K responses, scores [N, K]."""
  n, k = len(examples), len(examples[0]["responses"])
  ids_all = np.full((n, k, seq_len), tok.pad_id, np.int32)
  seg = np.zeros((n, k, seq_len), np.int32)
  last = np.zeros((n, k), np.int32)
  longest = 0
  for i, ex in enumerate(examples):
    for j, response in enumerate(ex["responses"]):
      ids, _ = data_lib.chat.encode(tok, ex["prompt"], response)
      longest = max(longest, len(ids))
      m = min(len(ids), seq_len)
      ids_all[i, j, :m], seg[i, j, :m], last[i, j] = ids[:m], 1, m - 1
  if longest > seq_len:
    raise ConfigError(f"the longest ranked chat is {longest} tokens but config.train.seq_len="
                      f"{seq_len}; set config.train.seq_len >= {longest}.")
  return {"inputs": ids_all, "segment_ids": seg, "last": last,
          "scores": np.asarray([ex["scores"] for ex in examples], np.float32)}


def shared_prompt_arrays(examples: list[dict], tok, seq_len: int, multiple: int = 8) -> dict:
  """One row per prompt: the prompt once, then its K responses, each attending to the
  prompt and itself only (the prompt's segment is SHARED_SEGMENT) -> inputs, positions,
  segment_ids [N, row_len], last [N, K] (each response's final token), scores [N, K].

  Every response's positions continue from the prompt's end, so each one is scored as
  if it were the only reply (equal to `preference_arrays` up to float rounding) at
  about (P + K * R) / (K * (P + R)) of the tokens (P, R: prompt and response lengths).
  row_len is the longest row rounded up to `multiple`; seq_len bounds each chat.
  """
  rows, longest = [], 0
  for ex in examples:
    prefix = data_lib.chat.encode(tok, ex["prompt"]).ids.tolist()
    parts = []
    for response in ex["responses"]:
      ids = data_lib.chat.encode(tok, ex["prompt"], response).ids.tolist()
      if ids[:len(prefix)] != prefix:
        raise ValueError(f"the chat of {ex['prompt']!r} with {response!r} does not start with "
                         "the prompt's own tokens; set config.shared_prompt=False.")
      longest = max(longest, len(ids))
      parts.append(ids[len(prefix):])
    rows.append((prefix, parts))
  if longest > seq_len:
    raise ConfigError(f"the longest ranked chat is {longest} tokens but config.train.seq_len="
                      f"{seq_len}; set config.train.seq_len >= {longest}.")
  n, k = len(rows), len(rows[0][1])
  width = max(len(p) + sum(len(r) for r in rs) for p, rs in rows)
  width = -(-width // multiple) * multiple
  out = {"inputs": np.full((n, width), tok.pad_id, np.int32),
         "positions": np.zeros((n, width), np.int32),
         "segment_ids": np.zeros((n, width), np.int32),
         "last": np.zeros((n, k), np.int32),
         "scores": np.asarray([ex["scores"] for ex in examples], np.float32)}
  for i, (prefix, parts) in enumerate(rows):
    at = len(prefix)
    out["inputs"][i, :at] = prefix
    out["positions"][i, :at] = np.arange(at)
    out["segment_ids"][i, :at] = SHARED_SEGMENT
    for j, part in enumerate(parts):
      end = at + len(part)
      out["inputs"][i, at:end] = part
      out["positions"][i, at:end] = np.arange(len(prefix), len(prefix) + len(part))
      out["segment_ids"][i, at:end] = j + 1
      out["last"][i, j] = end - 1
      at = end
  return out


def split_heldout(examples: list[dict], fraction: float,
                  fact_fraction: float = 0.0) -> tuple[list, list, list]:
  """Deterministic (train, heldout, unseen) split of ranked prompts.

  unseen: every prompt about every 1/fact_fraction-th fact (by first
  appearance), so the reward model never sees a ranking about those facts;
  heldout: every 1/fraction-th of the other prompts (new wording and
  candidates; with several prompts per fact their facts are usually ranked in
  train). fact_fraction = 0 holds out no whole facts.
  """
  if not 0 < fraction < 1:
    raise ConfigError(f"config.heldout_fraction={fraction} must be in (0, 1).")
  if not 0 <= fact_fraction < 1:
    raise ConfigError(f"config.heldout_fact_fraction={fact_fraction} must be in [0, 1).")
  facts: dict[tuple, int] = {}
  for ex in examples:
    facts.setdefault((ex["subject"], ex["relation"]), len(facts))
  every_fact = max(int(round(1 / fact_fraction)), 2) if fact_fraction else 0
  is_unseen = lambda ex: bool(every_fact) and (  # noqa: E731
      facts[(ex["subject"], ex["relation"])] % every_fact == every_fact - 1)
  unseen = [ex for ex in examples if is_unseen(ex)]
  rest = [ex for ex in examples if not is_unseen(ex)]
  every = max(int(round(1 / fraction)), 2)
  heldout = [ex for i, ex in enumerate(rest) if i % every == every - 1]
  train = [ex for i, ex in enumerate(rest) if i % every != every - 1]
  if not train or not heldout:
    raise ConfigError(
        f"the reward-model split of {len(examples)} ranked prompts leaves {len(train)} for "
        f"training and {len(heldout)} held out (config.heldout_fraction={fraction}, "
        f"config.heldout_fact_fraction={fact_fraction}); lower the fractions or use a larger "
        "world (config.data.world_size).")
  return train, heldout, unseen


def make_rewards_fn(model: ScalarHeadModel, tuning: tuning_lib.Tuning | None = None):
  """(params, arrays dict) -> rewards [B, K] at each response's last token.

  Arrays are `preference_arrays` (inputs [B, K, L]) or `shared_prompt_arrays`
  (inputs, positions [B, row_len], last [B, K]). With a LoRA `tuning`, params
  are {"base": {"backbone", "head"}, "lora"}.
  """
  tuning = tuning or tuning_lib.Tuning()

  def rewards(params, batch, rng=None):  # rng: LoRA dropout while training
    if batch["inputs"].ndim == 2:  # shared prompt: one row per prompt
      values = tuning.apply(model, params, batch["inputs"], batch["positions"],
                            batch["segment_ids"], rng=rng)  # [B, row_len]
      return jnp.take_along_axis(values, batch["last"], axis=1)  # [B, K]
    b, k, length = batch["inputs"].shape
    flat = lambda x: x.reshape(b * k, *x.shape[2:])  # [B*K, ...]
    positions = jnp.broadcast_to(jnp.arange(length), (b * k, length))
    values = tuning.apply(model, params, flat(batch["inputs"]), positions,
                          flat(batch["segment_ids"]), rng=rng)  # [B*K, L]
    return read_at(values, flat(batch["last"])).reshape(b, k)
  return rewards


def pairwise_accuracy(rewards: np.ndarray, scores: np.ndarray, ties: float = 0.0) -> float:
  """Fraction of strictly-ordered labeler pairs the rewards order the same way.

  rewards, scores: [N, K]. A pair the rewards tie counts `ties` (0.5: the expected
  accuracy of breaking the tie at random, for rankers with few distinct values)."""
  rewards = np.asarray(rewards, np.float64)
  better = scores[:, :, None] > scores[:, None, :]
  right = (rewards[:, :, None] > rewards[:, None, :]) & better
  tied = (rewards[:, :, None] == rewards[:, None, :]) & better
  return float((right.sum() + ties * tied.sum()) / max(better.sum(), 1))


def make_task(config: ml_collections.ConfigDict, workdir: str | None = None):
  """(task, model, tokenizer, held-out arrays by metric name) from config.init_from (SFT).

  The held-out arrays: "heldout_accuracy" (held-out prompts) and, with
  config.heldout_fact_fraction > 0, "unseen_fact_accuracy" (whole facts held out); each
  also has "surface" [N, K]: `labeler.surface_score` of every response (the ranking that
  knows no fact: decline > hedged > plain), the baseline the RM must beat.
  """
  tc = config.train
  margin = float(config.get("margin", 0.0))  # checked before anything is loaded
  if margin < 0:
    raise ConfigError(f"config.margin={margin} must be >= 0 (0 = the plain InstructGPT loss).")
  if not config.init_from:
    raise ConfigError("config.init_from is empty: the reward model starts from an SFT "
                      "workdir (--config.init_from=/path/to/sft).")
  stage = lm.load_stage(config.init_from)
  inherit(config, stage.config)
  data_lib.validate_config(config.data)
  tok, model_cfg = stage.tokenizer, stage.model_config
  if tc.seq_len > model_cfg.max_len:
    raise ConfigError(f"config.train.seq_len={tc.seq_len} exceeds the model's max_len="
                      f"{model_cfg.max_len}; lower it.")
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(tok.path, os.path.join(workdir, "tokenizer.model"))
  model = ScalarHeadModel(model_cfg)
  tuning = make_tuning(config, model)
  train_ex, heldout_ex, unseen_ex = split_heldout(
      data_lib.examples(config.data, "preferences"), config.heldout_fraction,
      config.get("heldout_fact_fraction", 0.0))
  to_arrays = shared_prompt_arrays if config.get("shared_prompt", False) else preference_arrays
  arrays = to_arrays(train_ex, tok, tc.seq_len)
  heldout = {"heldout_accuracy": to_arrays(heldout_ex, tok, tc.seq_len)}
  if unseen_ex:
    heldout["unseen_fact_accuracy"] = to_arrays(unseen_ex, tok, tc.seq_len)
  for key, exs in (("heldout_accuracy", heldout_ex), ("unseen_fact_accuracy", unseen_ex)):
    if key in heldout:  # the surface-only ranker's scores of the same responses
      heldout[key]["surface"] = np.asarray(
          [[data_lib.labeler.surface_score(r) for r in ex["responses"]] for ex in exs],
          np.float32)
  batches = data_lib.example_batches(
      arrays, batch_size=local_batch_size(tc), shard_index=jax.process_index(),
      shard_count=jax.process_count(), seed=config.seed, key="preferences")
  rewards_fn = make_rewards_fn(model, tuning)
  row_tokens = arrays["inputs"][0].size  # tokens the model runs per prompt

  def base_init(rng):
    return model.init({"params": rng}, jnp.zeros((1, tc.seq_len), jnp.int32))["params"]

  init_params = tuning.init_params(base_init)

  def initial_params():
    fresh = nn.meta.unbox(jax.jit(base_init)(jax.random.PRNGKey(config.seed)))
    return tuning.initial({**fresh, "backbone": tuning_lib.stage_params(stage)}, config.seed)

  def loss_fn(params, batch, rng):
    return ranking_loss(rewards_fn(params, batch, rng), batch["scores"], margin)

  tokens = tc.global_batch_size * row_tokens
  task = Task(init_params=init_params, loss_fn=loss_fn, data=batches, tokens_per_step=tokens,
              flops_per_step=flops_per_token(model_cfg, arrays["inputs"].shape[-1]) * tokens,
              initial_params=initial_params, trainable_mask=tuning.mask(init_params))
  return task, model, tok, heldout


def make_tuning(config: ml_collections.ConfigDict, model: ScalarHeadModel) -> tuning_lib.Tuning:
  """Full fine-tuning, or LoRA on the backbone with the scalar head trainable (config.lora)."""
  return tuning_lib.from_config(config, model, config.train.seq_len, None, ("head",))
