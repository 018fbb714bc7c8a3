"""BERT pretraining (masked LM + next-sentence prediction) on any llmrl dataset."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections

from llmrl import data as data_lib
from llmrl.config import ConfigError, check_divides, check_enum, check_positive
from llmrl.models.accounting import bert_flops_per_token, bert_param_counts
from llmrl.models.bert import Bert, BertConfig
from llmrl.objectives.mlm import bert_pretraining_loss
from llmrl.tasks.examples import bert_batches
from llmrl.models.moe import add_to_loss
from llmrl.tasks import moe as moe_lib
from llmrl.train.trainer import Task, local_batch_size

DTYPES = ("float32", "bfloat16", "float16")


def model_config_block() -> ml_collections.ConfigDict:
  """`config.model` for a BERT encoder with MLM and NSP heads."""
  c = ml_collections.ConfigDict()
  c.num_layers = 2
  c.d_model = 128
  c.num_heads = 4
  c.d_ff = 512
  c.max_len = 0  # position table rows; 0 = config.train.seq_len
  c.activation = "gelu_exact"  # "gelu_exact" (BERT) | "gelu" (tanh) | "relu"
  c.dropout_rate = 0.0
  c.attention_impl = "auto"  # "auto" (GPU: "jax", else "plain") | "plain" | "blockwise" | "jax"
  c.dtype = "float32"  # compute dtype; params stay float32
  c.remat = "none"  # "none" | "full" | "dots"
  c.moe = moe_lib.config_block()  # mixture of experts (num_experts = 0: dense)
  return c


def objective_config_block() -> ml_collections.ConfigDict:
  """`config.objective`: the masking rate (NSP pairs are always 50% next / 50% random)."""
  c = ml_collections.ConfigDict()
  c.mask_rate = 0.15  # of non-special tokens; then 80% <mask>, 10% random, 10% kept
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Shape and enum checks with config key names, before anything compiles."""
  c, seq_len = config.model, config.train.seq_len
  check_enum("model.activation", c.activation, ("gelu_exact", "gelu", "relu"))
  check_enum("model.attention_impl", c.attention_impl, ("auto", "plain", "blockwise", "jax"))
  check_enum("model.dtype", c.dtype, DTYPES)
  check_enum("model.remat", c.remat, ("none", "full", "dots"))
  for k in ("num_layers", "d_model", "num_heads", "d_ff"):
    check_positive(f"model.{k}", c[k])
  check_divides(
    "config.model.num_heads",
    c.num_heads,
    "config.model.d_model",
    c.d_model,
    "choose a head count that divides the width",
  )
  if c.max_len and c.max_len < seq_len:
    raise ConfigError(
      f"config.model.max_len={c.max_len} is shorter than "
      f"config.train.seq_len={seq_len}; raise max_len or set it to 0."
    )
  if seq_len < 8:
    raise ConfigError(f"config.train.seq_len={seq_len} must be >= 8 for [CLS] A [SEP] B [SEP].")
  moe_lib.validate(c, c.num_layers)
  if not 0.0 < config.objective.mask_rate < 1.0:
    raise ConfigError(f"config.objective.mask_rate={config.objective.mask_rate} must be in (0, 1).")


def copy_tokenizer(tokenizer, workdir: str | None) -> None:
  """Records the tokenizer a run used as workdir/tokenizer.model."""
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    dest = os.path.join(workdir, "tokenizer.model")
    if os.path.abspath(tokenizer.path) != os.path.abspath(dest):
      shutil.copyfile(tokenizer.path, dest)


def make_task(config: ml_collections.ConfigDict, workdir: str | None = None):
  """Builds (task, model, tokenizer) for BERT MLM + NSP pretraining."""
  tc, mc = config.train, config.model
  validate(config)
  data_lib.validate_config(config.data)
  tokenizer = data_lib.get_tokenizer(config.data)
  copy_tokenizer(tokenizer, workdir)
  cfg = BertConfig(
    vocab_size=tokenizer.vocab_size, max_len=mc.max_len or tc.seq_len,
    num_layers=mc.num_layers, d_model=mc.d_model, num_heads=mc.num_heads, d_ff=mc.d_ff,
    activation=mc.activation, dropout_rate=mc.dropout_rate, attention_impl=mc.attention_impl,
    dtype=mc.dtype, remat=mc.remat, mlm_head=True, nsp_head=True, pooler=True,
    moe=moe_lib.make(mc))  # fmt: skip
  model = Bert(cfg)
  batches = bert_batches(
    config.data, tokenizer, batch_size=local_batch_size(tc), seq_len=tc.seq_len,
    shard_index=jax.process_index(), shard_count=jax.process_count(), seed=config.seed,
    mask_rate=config.objective.mask_rate)  # fmt: skip
  deterministic = cfg.dropout_rate == 0.0 and cfg.moe is None  # MoE: train capacity, jitter

  def init_params(rng):
    return model.init({"params": rng}, jnp.zeros((1, tc.seq_len), jnp.int32))["params"]

  def loss_fn(params, batch, rng):
    (mlm, nsp), aux = model.apply(
      {"params": params}, batch["inputs"], batch["token_type_ids"], batch["segment_ids"],
      deterministic=deterministic, rngs={"dropout": rng}, method=Bert.pretrain,
      mutable=["moe"])  # fmt: skip
    loss_sum, (weight, sums) = bert_pretraining_loss(
      mlm, nsp, batch["targets"], batch["weights"], batch["nsp_labels"])  # fmt: skip
    return add_to_loss(loss_sum, weight, sums, aux.get("moe", {}), cfg.moe)

  tokens = tc.global_batch_size * tc.seq_len
  task = Task(init_params=init_params, loss_fn=loss_fn, data=batches, tokens_per_step=tokens,
              flops_per_step=bert_flops_per_token(cfg, tc.seq_len) * tokens)  # fmt: skip
  return task, model, tokenizer


def describe(model: Bert) -> str:
  """One line with the model's size (for logs)."""
  n = bert_param_counts(model.config)
  extra = f", {n['active'] / 1e6:.2f}M active (MoE)" if model.config.moe else ""
  return (f"BERT: {n['total'] / 1e6:.2f}M params ({n['non_embedding'] / 1e6:.2f}M "
          f"non-embedding{extra})")  # fmt: skip
