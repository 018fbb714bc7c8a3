"""Supervised fine-tuning on chat turns: the loss counts assistant tokens only."""

from __future__ import annotations

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl import data as data_lib
from llmrl.adapters import tuning as tuning_lib
from llmrl.config import ConfigError
from llmrl.models import GPT, flops_per_token
from llmrl.objectives.lm import causal_lm_loss
from llmrl.rlhf import probe
from llmrl.tasks import lm
from llmrl.train.trainer import Task, local_batch_size

log = logging.getLogger("llmrl")


def chat_arrays(examples: list[dict], tok: data_lib.Tokenizer, seq_len: int) -> dict:
  """Padded next-token arrays [N, seq_len] of chats; weights are 1 on response targets.

  inputs/targets are the chat ids shifted by one; weights[t] = 1 when target t
  is an assistant token (or its <|end|>), so prompts and padding carry no loss.
  Padding uses tok.pad_id (never eos) and segment id 0.
  """
  n = len(examples)
  out = {k: np.zeros((n, seq_len), np.int32) for k in ("inputs", "targets", "segment_ids")}
  out["positions"] = np.tile(np.arange(seq_len, dtype=np.int32), (n, 1))
  out["weights"] = np.zeros((n, seq_len), np.float32)
  out["inputs"][:] = tok.pad_id
  out["targets"][:] = tok.pad_id
  longest = 0
  for i, ex in enumerate(examples):
    ids, mask = data_lib.chat.encode(tok, ex["prompt"], ex["response"])
    longest = max(longest, len(ids))
    if len(ids) - 1 > seq_len:
      continue
    t = len(ids) - 1
    out["inputs"][i, :t] = ids[:-1]
    out["targets"][i, :t] = ids[1:]
    out["weights"][i, :t] = mask[1:]
    out["segment_ids"][i, :t] = 1
  if longest - 1 > seq_len:
    raise ConfigError(f"the longest chat is {longest} tokens but config.train.seq_len="
                      f"{seq_len}; set config.train.seq_len >= {longest - 1}.")
  return out


WORLD_KEYS = ("name", "world_seed", "world_size", "filler_scale", "files", "text_key",
              "tokenizer_type", "vocab_size")


def inherit(config: ml_collections.ConfigDict, parent: ml_collections.ConfigDict) -> None:
  """Makes config.model and the dataset identity those of the run it starts from.

  So the workdir's config.json describes the model really trained, and the
  questions come from the world the parent was trained on.
  """
  with config.unlocked():
    config.model = ml_collections.ConfigDict(parent.model.to_dict())
    if not config.model.max_len:  # record the context length the model was built with
      config.model.max_len = parent.train.seq_len
    for key in WORLD_KEYS:
      if key in parent.data and config.data[key] != parent.data[key]:
        log.info("config.data.%s=%r taken from %s", key, parent.data[key], config.init_from)
        config.data[key] = parent.data[key]


def make_task(config: ml_collections.ConfigDict, workdir: str | None = None):
  """(task, model, tokenizer) for SFT, starting from config.init_from (a pretraining workdir).

  With an empty init_from the model starts from random weights (config.model)
  and the tokenizer comes from config.data.
  """
  tc = config.train
  data_lib.validate_config(config.data)
  below = float(config.get("decline_below", 0.0))  # checked before anything is loaded
  if not 0.0 <= below <= 1.0:
    raise ConfigError(f"config.decline_below={below} must be in [0, 1] (0 = keep every answer).")
  if below and not config.init_from:
    raise ConfigError("config.decline_below > 0 probes a pretrained model's knowledge: set "
                      "config.init_from to a pretraining workdir (or decline_below=0).")
  if config.init_from:
    stage = lm.load_stage(config.init_from)
    tok, model_cfg = stage.tokenizer, stage.model_config
    base_params = tuning_lib.stage_params(stage)
    log.info("SFT starts from %s (step %d)", config.init_from, stage.step)
    inherit(config, stage.config)
    if tc.seq_len > model_cfg.max_len:
      raise ConfigError(f"config.train.seq_len={tc.seq_len} exceeds the pretrained model's "
                        f"max_len={model_cfg.max_len}; lower it.")
  else:
    lm.validate_model(config.model, tc.seq_len)
    tok = data_lib.get_tokenizer(config.data)
    model_cfg = lm.make_gpt_config(config.model, tok.vocab_size, tc.seq_len)
    base_params = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(tok.path, os.path.join(workdir, "tokenizer.model"))
  model = GPT(model_cfg)
  tuning = tuning_lib.from_config(config, model, tc.seq_len, tok)
  examples = data_lib.examples(config.data, "sft")
  if below:
    examples, stats = probe.decline_unknown(examples, model, base_params, tok, below)
    log.info("knowledge probe (decline_below=%g): %d of %d known-fact answers become "
             "\"I don't know.\" (median probability %.3f)", below, stats["declined"],
             stats["known"], stats["median_probability"])
  arrays = chat_arrays(examples, tok, tc.seq_len)
  batches = data_lib.example_batches(
      arrays, batch_size=local_batch_size(tc), shard_index=jax.process_index(),
      shard_count=jax.process_count(), seed=config.seed, key="sft")
  deterministic = model_cfg.dropout_rate == 0.0

  def base_init(rng):
    return model.init({"params": rng}, jnp.zeros((1, tc.seq_len), jnp.int32))["params"]

  init_params = tuning.init_params(base_init)
  initial = None
  if base_params is not None:
    initial = lambda: tuning.initial(base_params, config.seed)  # noqa: E731

  def loss_fn(params, batch, rng):
    logits = tuning.apply(model, params, batch["inputs"], batch["positions"],
                          batch["segment_ids"], rng=rng, deterministic=deterministic,
                          rngs={"dropout": rng})
    return causal_lm_loss(logits, batch["targets"], batch["weights"])

  tokens = tc.global_batch_size * tc.seq_len
  task = Task(init_params=init_params, loss_fn=loss_fn, data=batches, tokens_per_step=tokens,
              flops_per_step=flops_per_token(model_cfg, tc.seq_len) * tokens,
              initial_params=initial, trainable_mask=tuning.mask(init_params))
  return task, model, tok
