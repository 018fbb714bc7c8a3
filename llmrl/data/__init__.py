"""llmrl.data: the generated world, sentencepiece tokenizers and the grain LM pipeline.

Typical use (what the training engine calls):

    from llmrl import data
    cfg = data.default_config()
    data.validate_config(cfg)
    tok = data.get_tokenizer(cfg)
    it = data.lm_batches(cfg, tok, batch_size=8, seq_len=128,
                         shard_index=jax.process_index(),
                         shard_count=jax.process_count(), seed=0)
    batch = next(it)   # inputs, targets, weights, segment_ids, positions: [8, 128]
    state = it.get_state(); it.set_state(state)

The generated world's structured splits (see qa.py, labeler.py, chat.py):

    sft = data.examples(cfg, "sft")   # [{"prompt", "response", "text", "subject", ...}]
    prefs = data.examples(cfg, "preferences")   # + "responses", "scores", "ranks"
    data.labeler.score(example, "I think ...")  # the true reward, +1 .. -4
    ids, loss_mask = data.chat.encode(tok, ex["prompt"], ex["response"])

Everything prepared lives under cfg.cache_dir (default ~/.cache/llmrl):
tfds/ (array_record datasets), tokenizers/ (*.model), tokens/ (token-id
caches), locks/.
"""

from __future__ import annotations

from llmrl.data import chat, labeler
from llmrl.data.examples_pipeline import example_batches
from llmrl.data.config import (
  STRUCTURED_SPLITS,
  DataConfigError,
  default_config,
  validate_batching,
  validate_config,
)
from llmrl.data.tokenizer import Tokenizer, get_tokenizer, load_tokenizer, train_tokenizer
from llmrl.data.world import Fact, World, build_world


def open_split(cfg, split: str | None = None):
  """Prepares (if needed) and opens a split as a DocSource of texts (see builders.py)."""
  from llmrl.data import builders

  validate_config(cfg)
  return builders.open_split(cfg, split)


def examples(cfg, split: str) -> list[dict]:
  """All examples of a synthetic_world split as plain-Python dicts, in a fixed order.

  Prepares the dataset if needed. Fields per split (qa.py has the details):
    sft, eval_known, eval_unknown: prompt, response (gold answer; "I don't
      know." for held-out facts), text (the rendered chat, see chat.py),
      subject, relation, object (the true value), known (bool), fact_id
      ("subject|relation"; eval asks each fact cfg.eval_wordings ways),
      alternatives (all values of the relation, for labeler.score)
    preferences: prompt, text (generation prompt), subject, relation, object,
      known, fact_id, alternatives, responses (K strings), scores
      (labeler.score of each), ranks (0 = best; ties broken by response text)
    pretrain, validation: text, kind
  Other datasets have no structured splits (DataConfigError).
  """
  from llmrl.data import builders

  validate_config(cfg)
  return builders.read_examples(cfg, split)


def tokenized(cfg, tok: Tokenizer, split: str | None = None):
  """Token ids of a split (cached on disk) as a TokenizedSplit."""
  from llmrl.data import token_cache

  return token_cache.tokenized_split(open_split(cfg, split), tok, cfg.cache_dir)


def lm_batches(
  cfg,
  tok: Tokenizer,
  *,
  batch_size: int,
  seq_len: int,
  shard_index: int = 0,
  shard_count: int = 1,
  seed: int | None = None,
  split: str | None = None,
):
  """Infinite iterator of packed causal-LM batches for this host's shard.

  Each batch is a dict of numpy arrays [batch_size, seq_len]: inputs,
  targets (int32), weights (float32), segment_ids, positions (int32). The
  global batch k is the concatenation over shard_index of this function's
  batch k (see pipeline.py). seed defaults to cfg.shuffle_seed; split to
  cfg.split. The iterator has get_state() / set_state(state) for exact resume.
  """
  from llmrl.data import pipeline, token_cache

  validate_batching(batch_size, seq_len, shard_index, shard_count)
  seed = cfg.shuffle_seed if seed is None else seed
  if not isinstance(seed, int) or seed < 0:
    raise DataConfigError(
      f"seed={seed!r} must be an int >= 0; set config.shuffle_seed or pass seed="
    )
  source = open_split(cfg, split)
  data = token_cache.tokenized_split(source, tok, cfg.cache_dir)
  packed = pipeline.PackedBatches(
    data, batch_size, seq_len, shard_index, shard_count, seed, tok.pad_id
  )
  return pipeline.LMBatchIterator(
    packed, cfg.prefetch, f"{source.key}/{source.split}/{tok.fingerprint}"
  )


__all__ = [
  "STRUCTURED_SPLITS",
  "DataConfigError",
  "example_batches",
  "Fact",
  "Tokenizer",
  "World",
  "build_world",
  "chat",
  "default_config",
  "examples",
  "get_tokenizer",
  "labeler",
  "lm_batches",
  "load_tokenizer",
  "open_split",
  "tokenized",
  "train_tokenizer",
  "validate_batching",
  "validate_config",
]
