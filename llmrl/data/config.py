"""Data configuration: the default ConfigDict and its validation.

Every field is commented in `default_config`. `validate_config` checks a
config before anything is prepared or compiled and raises `DataConfigError`
with one line that names the field and the fix.
"""

from __future__ import annotations

import difflib
import glob
import os

import ml_collections

BUILTIN_DATASETS = ("synthetic_world", "text_files")
WORLD_SIZES = ("tiny", "small", "medium")
TOKENIZER_TYPES = ("unigram", "bpe")
# Structured splits of synthetic_world (read with data.examples; see qa.py).
STRUCTURED_SPLITS = ("sft", "preferences", "eval_known", "eval_unknown")
# Splits each builtin dataset provides. For text_files and other TFDS names,
# "pretrain" is an alias of "train".
BUILTIN_SPLITS = {
  "synthetic_world": ("pretrain", "validation") + STRUCTURED_SPLITS,
  "text_files": ("pretrain", "train", "validation"),
}
# Ids reserved in every trained tokenizer: 4 specials, <mask>, 100 sentinels,
# 4 chat markers and 256 byte-fallback pieces (see tokenizer.py).
RESERVED_IDS = 365
MAX_RESPONSES = 8  # Upper bound of config.data.num_responses.
MAX_PROMPTS_PER_FACT = 8  # Upper bound of config.data.prompts_per_fact.
MAX_EVAL_WORDINGS = 3  # Upper bound of config.data.eval_wordings (qa.QUESTIONS per relation).
MIN_VOCAB_SIZE = 400


class DataConfigError(ValueError):
  """A data config, data file or data request is wrong; the message says how to fix it."""


def default_config() -> ml_collections.ConfigDict:
  """Returns the default data config (the embedded generated world, tiny)."""
  cfg = ml_collections.ConfigDict()
  # Dataset: "synthetic_world" (generated, offline), "text_files" (local
  # .txt/.jsonl files, see `files`), or any TFDS name such as "lm1b"
  # (downloaded by TFDS into cache_dir/tfds; needs network the first time).
  cfg.name = "synthetic_world"
  # Split to read. "pretrain" for causal-LM pretraining; "validation" for
  # held-out text. For text_files / TFDS names, "pretrain" means "train".
  # synthetic_world also has the structured splits sft, preferences,
  # eval_known and eval_unknown (read with data.examples; as LM text they
  # give their rendered chats).
  cfg.split = "pretrain"
  # Where prepared datasets (cache_dir/tfds), tokenizers
  # (cache_dir/tokenizers) and token caches (cache_dir/tokens) are written.
  cfg.cache_dir = "~/.cache/llmrl"
  # Seed of the generated world (entities, facts and documents).
  cfg.world_seed = 0
  # Size of the generated world: "tiny" | "small" | "medium", or a number
  # of people written as a string, e.g. "1000" (other entities and the text
  # scale with it). tiny: 48 people, ~54k tokens; small: 400; medium: 4000.
  cfg.world_size = "tiny"
  # synthetic_world only: candidate responses per prompt in the
  # "preferences" split (K-way ranked comparisons), 2..8.
  cfg.num_responses = 4
  # synthetic_world only: prompts per ranked fact in the "preferences" split,
  # each worded differently with its own K candidates (1..MAX_PROMPTS_PER_FACT).
  cfg.prompts_per_fact = 1
  # synthetic_world only: questions per fact in eval_known and eval_unknown,
  # each worded differently (one example each, sharing a fact_id), 1..3;
  # more tells policies apart better (e.g. 2 in a 120-person world: 330).
  cfg.eval_wordings = 1
  # synthetic_world only: amount of filler text (arithmetic, lists, stories) in
  # the pretrain and validation splits, relative to the original mix (1.0: ~56%
  # of the characters; 0.2: ~20%, so facts are seen ~1.8x as often per token).
  cfg.filler_scale = 1.0
  # text_files only: a glob (or comma-separated globs, or a directory) of
  # .txt and .jsonl files. .txt: one document per blank-line separated
  # paragraph; .jsonl: one document per line, text in field `text_key`.
  cfg.files = ""
  # Field holding the text in .jsonl files and in TFDS examples.
  cfg.text_key = "text"
  # text_files only: fraction of documents put into the "validation" split.
  cfg.validation_fraction = 0.02
  # text_files only: skip lines that are not valid UTF-8 (and report how
  # many) instead of failing with the file name and byte offset.
  cfg.skip_bad_utf8 = False
  # Path to a sentencepiece .model file, or "" to train one on this dataset
  # (once; cached in cache_dir/tokenizers).
  cfg.tokenizer = ""
  # Vocabulary size of a trained tokenizer (>= 400; 365 ids are reserved).
  # A corpus supports only so many pieces: the tiny world allows up to ~2500
  # with bpe but only ~760 with unigram.
  cfg.vocab_size = 1024
  # Sentencepiece algorithm of a trained tokenizer: "bpe" | "unigram".
  cfg.tokenizer_type = "bpe"
  # At most this many documents are used to train a tokenizer.
  cfg.tokenizer_max_docs = 200_000
  # Default seed for the per-epoch document shuffle (lm_batches(seed=...)
  # overrides it).
  cfg.shuffle_seed = 0
  # Batches prepared ahead by background threads (0 = compute on demand).
  cfg.prefetch = 2
  return cfg


def _fail(msg: str) -> None:
  raise DataConfigError(msg)


def split_files(files: str) -> list[str]:
  """Expands the `files` field (comma-separated globs or directories) to sorted paths."""
  paths: list[str] = []
  for pattern in [p.strip() for p in files.split(",") if p.strip()]:
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
      found = [
        os.path.join(root, f)
        for root, _, names in os.walk(pattern)
        for f in names
        if f.endswith((".txt", ".jsonl"))
      ]
      if not found:
        _fail(
          f"config.data.files: directory {pattern} has no .txt or .jsonl files; "
          "point config.data.files at a folder or glob with text files"
        )
    elif glob.has_magic(pattern):
      found = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
      if not found:
        _fail(f"config.data.files: glob {pattern!r} matches no files; check the path or quote the glob")
    else:
      if not os.path.exists(pattern):
        _fail(f"config.data.files: file {pattern} does not exist; fix the path in config.data.files")
      found = [pattern]
    paths.extend(found)
  for p in paths:
    if not p.endswith((".txt", ".jsonl")):
      _fail(
        f"config.data.files: {p} is neither .txt nor .jsonl; rename it or remove it from config.data.files"
      )
    if os.path.getsize(p) == 0:
      _fail(f"config.data.files: file {p} is empty; add text or remove it from config.data.files")
  return sorted(set(paths))


def world_num_people(world_size) -> int:
  """Maps config.data.world_size to the number of people in the generated world."""
  named = {"tiny": 48, "small": 400, "medium": 4000}
  if isinstance(world_size, str) and world_size in named:
    return named[world_size]
  try:
    n = int(world_size)
  except (TypeError, ValueError):
    n = 0
  if n < 8:
    _fail(
      f"config.data.world_size={world_size!r} is not one of {WORLD_SIZES} or a number "
      ">= 8; set config.data.world_size='tiny'"
    )
  return n


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Checks a data config; raises DataConfigError naming the field and the fix."""
  for field in ("name", "split", "cache_dir", "tokenizer", "files", "text_key", "tokenizer_type"):
    if not isinstance(cfg.get(field), str):
      _fail(f"config.data.{field}={cfg.get(field)!r} must be a string")
  name = cfg.name
  if name not in BUILTIN_DATASETS:
    import tensorflow_datasets as tfds  # Only needed for non-builtin names.

    base = name.split(":")[0].split("/")[0]
    known = set(tfds.list_builders(with_community_datasets=False))
    if base not in known:
      close = difflib.get_close_matches(name, list(BUILTIN_DATASETS) + sorted(known), n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      _fail(
        f"config.data.name={name!r} is not a builtin dataset {BUILTIN_DATASETS} nor a "
        f"TFDS name; {hint}set config.data.name='synthetic_world'"
      )
  if name in BUILTIN_SPLITS and cfg.split not in BUILTIN_SPLITS[name]:
    _fail(f"config.data.split={cfg.split!r} is not a split of {name}; use one of {BUILTIN_SPLITS[name]}")
  if name == "synthetic_world":
    world_num_people(cfg.world_size)
    if not isinstance(cfg.world_seed, int):
      _fail(f"config.data.world_seed={cfg.world_seed!r} must be an int")
    k = cfg.get("num_responses", 4)
    if not isinstance(k, int) or not 2 <= k <= MAX_RESPONSES:
      _fail(f"config.data.num_responses={k!r} must be an int in [2, {MAX_RESPONSES}]")
    q = cfg.get("prompts_per_fact", 1)
    if not isinstance(q, int) or not 1 <= q <= MAX_PROMPTS_PER_FACT:
      _fail(f"config.data.prompts_per_fact={q!r} must be an int in [1, {MAX_PROMPTS_PER_FACT}]")
    w = cfg.get("eval_wordings", 1)
    if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= MAX_EVAL_WORDINGS:
      _fail(
        f"config.data.eval_wordings={w!r} must be an int in [1, {MAX_EVAL_WORDINGS}] (question "
        "wordings per eval fact); set config.data.eval_wordings=1"
      )
    fs = cfg.get("filler_scale", 1.0)
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not 0 <= fs <= 4:
      _fail(f"config.data.filler_scale={fs!r} must be a number in [0, 4] (filler text relative "
            "to the original mix); set config.data.filler_scale=1.0")
  if name == "text_files":
    if not cfg.files:
      _fail(
        "config.data.files is empty but config.data.name='text_files'; set "
        "config.data.files to a glob of .txt/.jsonl files"
      )
    split_files(cfg.files)
    if not 0.0 <= cfg.validation_fraction < 1.0:
      _fail(f"config.data.validation_fraction={cfg.validation_fraction} must be in [0, 1)")
  if cfg.tokenizer:
    path = os.path.expanduser(cfg.tokenizer)
    if not os.path.isfile(path):
      _fail(
        f"config.data.tokenizer={cfg.tokenizer!r} does not exist; give a sentencepiece "
        ".model path or '' to train one"
      )
  else:
    if cfg.tokenizer_type not in TOKENIZER_TYPES:
      _fail(f"config.data.tokenizer_type={cfg.tokenizer_type!r} must be one of {TOKENIZER_TYPES}")
    if not isinstance(cfg.vocab_size, int) or cfg.vocab_size < MIN_VOCAB_SIZE:
      _fail(
        f"config.data.vocab_size={cfg.vocab_size!r} is too small: {RESERVED_IDS} ids "
        f"are reserved for specials and bytes; set config.data.vocab_size >= "
        f"{MIN_VOCAB_SIZE}"
      )
  if not isinstance(cfg.prefetch, int) or cfg.prefetch < 0:
    _fail(f"config.data.prefetch={cfg.prefetch!r} must be an int >= 0")


def validate_batching(batch_size: int, seq_len: int, shard_index: int, shard_count: int) -> None:
  """Checks the arguments of lm_batches; raises DataConfigError with the fix."""
  if not isinstance(batch_size, int) or batch_size < 1:
    _fail(
      f"batch_size={batch_size!r} must be an int >= 1 (it is the per-host batch); "
      "set a positive batch size"
    )
  if not isinstance(seq_len, int) or seq_len < 2:
    _fail(f"seq_len={seq_len!r} must be an int >= 2 (one input and one target); set seq_len >= 2")
  if not isinstance(shard_count, int) or shard_count < 1:
    _fail(f"shard_count={shard_count!r} must be an int >= 1 (usually jax.process_count())")
  if not isinstance(shard_index, int) or not 0 <= shard_index < shard_count:
    _fail(
      f"shard_index={shard_index!r} must be in [0, shard_count={shard_count}) "
      "(usually jax.process_index())"
    )
