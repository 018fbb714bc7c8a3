"""T5 pretraining (span corruption) on any llmrl dataset.

`config.train.seq_len` is the encoder input length; the raw text per example
and the target length follow from it (T5's random_spans_helper, see
llmrl.objectives.span_corruption.raw_length_for).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from llmrl import data as data_lib
from llmrl.config import ConfigError, check_enum, check_positive
from llmrl.models.accounting import t5_flops_per_example, t5_param_counts
from llmrl.models.t5 import T5, T5Config
from llmrl.objectives.span_corruption import raw_length_for, span_corruption_loss
from llmrl.tasks.bert import DTYPES, copy_tokenizer
from llmrl.tasks.examples import t5_batches
from llmrl.models.moe import add_to_loss
from llmrl.tasks import moe as moe_lib
from llmrl.train.trainer import Task, local_batch_size


def model_config_block() -> ml_collections.ConfigDict:
  """`config.model` for a T5 encoder-decoder."""
  c = ml_collections.ConfigDict()
  c.style = "v1_1"  # "v1_0" (ReLU, tied + scaled logits) | "v1_1" (gated-GELU, untied)
  c.num_layers = 2  # encoder blocks
  c.num_decoder_layers = 0  # 0 = num_layers
  c.d_model = 128
  c.num_heads = 4
  c.head_dim = 0  # 0 = d_model // num_heads
  c.d_ff = 512
  c.relative_buckets = 32
  c.relative_max_distance = 128
  c.dropout_rate = 0.0
  c.attention_impl = "auto"  # "auto" (GPU: "jax", else "plain") | "plain" | "blockwise" | "jax"
  c.attention_block_size = 128
  c.dtype = "float32"  # compute dtype; params stay float32
  c.remat = "none"  # "none" | "full" | "dots"
  c.moe = moe_lib.config_block()  # mixture of experts in both stacks (num_experts = 0: dense)
  return c


def objective_config_block() -> ml_collections.ConfigDict:
  """`config.objective`: span-corruption noise (T5 defaults)."""
  c = ml_collections.ConfigDict()
  c.noise_density = 0.15  # fraction of tokens corrupted
  c.mean_span_length = 3.0  # mean length of a corrupted span
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Shape and enum checks with config key names, before anything compiles."""
  c, o = config.model, config.objective
  check_enum("model.style", c.style, ("v1_0", "v1_1"))
  check_enum("model.attention_impl", c.attention_impl, ("auto", "plain", "blockwise", "jax"))
  check_positive("model.attention_block_size", c.get("attention_block_size", 128))
  check_enum("model.dtype", c.dtype, DTYPES)
  check_enum("model.remat", c.remat, ("none", "full", "dots"))
  for k in ("num_layers", "d_model", "num_heads", "d_ff", "relative_buckets"):
    check_positive(f"model.{k}", c[k])
  if not c.head_dim and c.d_model % c.num_heads:
    raise ConfigError(f"config.model.num_heads={c.num_heads} does not divide "
                      f"config.model.d_model={c.d_model}; set config.model.head_dim.")  # fmt: skip
  if not 0.0 < o.noise_density < 1.0 or o.mean_span_length < 1.0:
    raise ConfigError("config.objective.noise_density must be in (0, 1) and "
                      "config.objective.mean_span_length >= 1.")  # fmt: skip
  if config.train.seq_len < 8:
    raise ConfigError(f"config.train.seq_len={config.train.seq_len} must be >= 8.")
  moe_lib.validate(c, min(c.num_layers, c.num_decoder_layers or c.num_layers))


def make_task(config: ml_collections.ConfigDict, workdir: str | None = None):
  """Builds (task, model, tokenizer) for T5 span-corruption pretraining."""
  tc, mc, oc = config.train, config.model, config.objective
  validate(config)
  data_lib.validate_config(config.data)
  tokenizer = data_lib.get_tokenizer(config.data)
  copy_tokenizer(tokenizer, workdir)
  _, targets_len = raw_length_for(tc.seq_len, oc.noise_density, oc.mean_span_length)
  cfg = T5Config(
    vocab_size=tokenizer.vocab_size, num_layers=mc.num_layers,
    num_decoder_layers=mc.num_decoder_layers or None, d_model=mc.d_model,
    num_heads=mc.num_heads, head_dim=mc.head_dim or None, d_ff=mc.d_ff, style=mc.style,
    relative_buckets=mc.relative_buckets, relative_max_distance=mc.relative_max_distance,
    dropout_rate=mc.dropout_rate, max_len=max(targets_len, 1), attention_impl=mc.attention_impl,
    attention_block_size=mc.get("attention_block_size", 128), dtype=mc.dtype, remat=mc.remat, moe=moe_lib.make(mc))  # fmt: skip
  model = T5(cfg)
  batches = t5_batches(
    config.data, tokenizer, batch_size=local_batch_size(tc), inputs_len=tc.seq_len,
    shard_index=jax.process_index(), shard_count=jax.process_count(), seed=config.seed,
    noise_density=oc.noise_density, mean_span_length=oc.mean_span_length)  # fmt: skip
  deterministic = cfg.dropout_rate == 0.0 and cfg.moe is None  # MoE: train capacity, jitter

  def init_params(rng):
    enc = jnp.zeros((1, tc.seq_len), jnp.int32)
    return model.init({"params": rng}, enc, jnp.zeros((1, targets_len), jnp.int32))["params"]

  def loss_fn(params, batch, rng):
    logits, aux = model.apply(
      {"params": params}, batch["inputs"], batch["decoder_inputs"],
      segment_ids=batch["segment_ids"], deterministic=deterministic,
      rngs={"dropout": rng}, mutable=["moe"])  # fmt: skip
    loss_sum, (weight, sums) = span_corruption_loss(logits, batch["targets"], batch["weights"])
    return add_to_loss(loss_sum, weight, sums, aux.get("moe", {}), cfg.moe)

  b = tc.global_batch_size
  task = Task(init_params=init_params, loss_fn=loss_fn, data=batches,
              tokens_per_step=b * (tc.seq_len + targets_len),
              flops_per_step=b * t5_flops_per_example(cfg, tc.seq_len, targets_len))  # fmt: skip
  return task, model, tokenizer


def describe(model: T5) -> str:
  """One line with the model's size (for logs)."""
  n = t5_param_counts(model.config)
  extra = f", {n['active'] / 1e6:.2f}M active (MoE)" if model.config.moe else ""
  return (f"T5 {model.config.style}: {n['total'] / 1e6:.2f}M params "
          f"({n['non_embedding'] / 1e6:.2f}M non-embedding{extra})")  # fmt: skip
