"""Causal-LM pretraining of the decoder-only model on any llmrl dataset."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_collections

from llmrl import data as data_lib
from llmrl.config import ConfigError, check_divides, check_enum, check_positive
from llmrl.models import GPT, GPTConfig
from llmrl.models.accounting import count_params_from_config, flops_per_token
from llmrl.objectives.lm import causal_lm_loss
from llmrl.models.moe import add_to_loss
from llmrl.tasks import moe as moe_lib
from llmrl.train.trainer import Task, local_batch_size

DTYPES = ("float32", "bfloat16", "float16")


def model_config_block() -> ml_collections.ConfigDict:
  """`config.model` for a decoder-only transformer."""
  c = ml_collections.ConfigDict()
  c.style = "gpt2"            # "gpt2" (learned pos, LayerNorm, GELU) | "llama" (RoPE, RMSNorm, SwiGLU)
  c.num_layers = 2
  c.d_model = 128
  c.num_heads = 4
  c.num_kv_heads = 0          # 0 = num_heads (MHA); 1 = MQA; otherwise GQA
  c.d_ff = 512
  c.max_len = 0               # 0 = config.train.seq_len
  c.dropout_rate = 0.0
  c.tie_embeddings = True
  c.attention_impl = "auto"  # "auto" (GPU: "jax", else "plain") | "plain" | "blockwise" | "jax"
  c.attention_block_size = 128
  c.dtype = "float32"         # compute dtype; params stay float32
  c.remat = "none"            # "none" | "full" | "dots"
  c.scan_layers = False       # nn.scan over blocks stacked on a "layers" axis (not with moe)
  c.rope_base = 10000.0
  c.moe = moe_lib.config_block()  # mixture of experts (num_experts = 0: dense)
  return c


def validate_model(c: ml_collections.ConfigDict, seq_len: int) -> None:
  """Shape and enum checks with config key names, before anything compiles."""
  check_enum("model.style", c.style, ("gpt2", "llama"))
  check_enum("model.attention_impl", c.attention_impl, ("auto", "plain", "blockwise", "jax"))
  check_enum("model.dtype", c.dtype, DTYPES)
  check_enum("model.remat", c.remat, ("none", "full", "dots"))
  for k in ("num_layers", "d_model", "num_heads", "d_ff"):
    check_positive(f"model.{k}", c[k])
  check_divides("config.model.num_heads", c.num_heads, "config.model.d_model", c.d_model,
                "choose a head count that divides the width")
  if c.num_kv_heads:
    check_divides("config.model.num_kv_heads", c.num_kv_heads, "config.model.num_heads",
                  c.num_heads, "GQA needs whole groups of query heads")
  if c.max_len and c.max_len < seq_len:
    raise ConfigError(f"config.model.max_len={c.max_len} is shorter than "
                      f"config.train.seq_len={seq_len}; raise max_len or set it to 0.")
  if seq_len < 2:
    raise ConfigError(f"config.train.seq_len={seq_len} must be >= 2.")
  moe_lib.validate(c, c.num_layers)
  if c.get("scan_layers", False) and c.moe.num_experts:
    raise ConfigError(
        f"config.model.scan_layers=True needs identical blocks, but config.model.moe.num_experts="
        f"{c.moe.num_experts} makes every moe.every-th block different; set scan_layers=False.")


def make_gpt_config(c: ml_collections.ConfigDict, vocab_size: int, seq_len: int) -> GPTConfig:
  """GPTConfig from `config.model` (after validate_model)."""
  return GPTConfig(
      vocab_size=vocab_size, max_len=c.max_len or seq_len, num_layers=c.num_layers,
      d_model=c.d_model, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads or None,
      d_ff=c.d_ff, style=c.style, rope_base=c.rope_base, tie_embeddings=c.tie_embeddings,
      dropout_rate=c.dropout_rate, attention_impl=c.attention_impl,
      attention_block_size=c.attention_block_size, dtype=c.dtype, remat=c.remat,
      moe=moe_lib.make(c), scan_layers=bool(c.get("scan_layers", False)))


def make_task(config: ml_collections.ConfigDict, workdir: str | None = None):
  """Builds (task, model, tokenizer) for causal-LM pretraining.

  The tokenizer used is copied to workdir/tokenizer.model so every run records it.
  """
  tc = config.train
  validate_model(config.model, tc.seq_len)
  data_lib.validate_config(config.data)
  tokenizer = data_lib.get_tokenizer(config.data)
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    dest = os.path.join(workdir, "tokenizer.model")
    if os.path.abspath(tokenizer.path) != os.path.abspath(dest):
      shutil.copyfile(tokenizer.path, dest)
  task, model = model_task(config, tokenizer.vocab_size)
  import jax
  batches = data_lib.lm_batches(
      config.data, tokenizer, batch_size=local_batch_size(tc), seq_len=tc.seq_len,
      shard_index=jax.process_index(), shard_count=jax.process_count(), seed=config.seed)
  return dataclasses.replace(task, data=batches), model, tokenizer


def model_task(config: ml_collections.ConfigDict, vocab_size: int):
  """(Task without data, model) for config.model at vocabulary `vocab_size`.

  What `make_task` trains, minus tokenizer and data: enough to lower the train
  step ahead of time (`llmrl.train.trainer.lower_train_step`) for a pod config.
  """
  tc = config.train
  validate_model(config.model, tc.seq_len)
  if not config.model.max_len:  # record the context length the model is built with
    config.model.max_len = tc.seq_len
  cfg = make_gpt_config(config.model, vocab_size, tc.seq_len)
  model = GPT(cfg)
  deterministic = cfg.dropout_rate == 0.0 and cfg.moe is None  # MoE: train capacity, jitter
  z_loss = config.get("z_loss", 0.0)

  def init_params(rng):
    return model.init({"params": rng}, jnp.zeros((1, tc.seq_len), jnp.int32))["params"]

  def loss_fn(params, batch, rng):
    logits, aux = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                              segment_ids=batch["segment_ids"], deterministic=deterministic,
                              rngs={"dropout": rng}, mutable=["moe"])
    loss_sum, (weight, sums) = causal_lm_loss(logits, batch["targets"], batch["weights"], z_loss)
    return add_to_loss(loss_sum, weight, sums, aux.get("moe", {}), cfg.moe)

  tokens = tc.global_batch_size * tc.seq_len
  task = Task(init_params=init_params, loss_fn=loss_fn, data=None,
              tokens_per_step=tokens, flops_per_step=flops_per_token(cfg, tc.seq_len) * tokens)
  return task, model


def batch_spec(config: ml_collections.ConfigDict) -> dict:
  """Global-shape ShapeDtypeStructs of one packed LM batch (inputs, targets, ...)."""
  import jax
  shape = (config.train.global_batch_size, config.train.seq_len)
  keys = ("inputs", "targets", "positions", "segment_ids")
  spec = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in keys}
  spec["weights"] = jax.ShapeDtypeStruct(shape, jnp.float32)
  return spec


def describe(model: GPT) -> str:
  """One line with the model's size (for logs)."""
  n = count_params_from_config(model.config)
  moe = model.config.moe
  extra = (f", MoE {moe.num_experts} experts top-{moe.experts_per_token} every {moe.every}: "
           f"{n['active'] / 1e6:.2f}M active" if moe else "")
  return (f"GPT {model.config.style}: {n['total'] / 1e6:.2f}M params "
          f"({n['non_embedding'] / 1e6:.2f}M non-embedding{extra})")


class Stage(NamedTuple):
  """What a finished training stage left in its workdir."""
  config: ml_collections.ConfigDict   # its resolved config (config.json)
  model_config: GPTConfig
  tokenizer: data_lib.Tokenizer
  params: Any                         # newest checkpoint's params (host/one device)
  step: int


def load_stage(workdir: str, params_key: str | None = None) -> Stage:
  """Loads config.json, tokenizer.model and the newest params of a decoder-only run.

  `params_key` picks a sub-tree of the saved params (e.g. "backbone" of a reward model);
  by default an RLHF workdir gives its "policy".
  """
  from llmrl.train.checkpoint import load_params
  workdir = os.path.expanduser(workdir)
  paths = {name: os.path.join(workdir, name) for name in ("config.json", "tokenizer.model")}
  for path in paths.values():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing: {workdir} is not a finished llmrl "
                              "training workdir (train that stage first).")
  with open(paths["config.json"]) as f:
    config = ml_collections.ConfigDict(json.load(f))
  tokenizer = data_lib.load_tokenizer(paths["tokenizer.model"])
  model_block = config.model.get("backbone", config.model)
  seq_len = model_block.max_len or config.train.seq_len
  cfg = make_gpt_config(model_block, tokenizer.vocab_size, seq_len)
  step, params = load_params(workdir)
  if params_key is None and "policy" in params:
    params_key = "policy"
  if params_key:
    params = params[params_key]
  return Stage(config, cfg, tokenizer, params, step)
