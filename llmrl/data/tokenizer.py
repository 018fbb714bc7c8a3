"""Sentencepiece tokenizers: training (atomic, cached), loading and the Tokenizer wrapper.

Trained tokenizers reserve these ids (pad is distinct from eos):

    0 <pad>   1 </s> (eos)   2 <s> (bos)   3 <unk>   4 <mask>
    5..104    <extra_id_0> .. <extra_id_99>  (T5-style sentinels)
    105..108  <|system|> <|user|> <|assistant|> <|end|>  (chat role markers)
    109..364  <0x00> .. <0xFF>  (byte fallback: any text round-trips)

The named symbols are sentencepiece user-defined symbols, so they are never
split and `encode("<|user|>")` gives their id. Normalisation is "identity" and
extra whitespace is kept, so `decode(encode(text)) == text` for any text
(ASCII, accented Latin, CJK, emoji). Digits are split into single pieces.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from llmrl.data import config as config_lib
from llmrl.data import textfiles
from llmrl.data.config import DataConfigError

NUM_SENTINELS = 100
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
MASK_TOKEN = "<mask>"
USER_SYMBOLS = (MASK_TOKEN,) + tuple(f"<extra_id_{i}>" for i in range(NUM_SENTINELS)) + ROLE_TOKENS
_MAX_LINE_CHARS = 2000  # Sentencepiece skips lines over 4192 bytes; split them.
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\).*<= (\d+)")


class Tokenizer:
  """A loaded sentencepiece model with the project's special ids.

  Ids missing from a foreign model (e.g. no <mask>) are None; a model
  without a pad id uses its unk id as pad (padding always has weight 0).
  """

  def __init__(self, path: str):
    self.path = os.path.abspath(os.path.expanduser(path))
    self.sp = spm.SentencePieceProcessor(model_file=self.path)
    self.vocab_size: int = self.sp.get_piece_size()
    self.eos_id = self._id_or_none(self.sp.eos_id())
    self.bos_id = self._id_or_none(self.sp.bos_id())
    self.unk_id: int = self.sp.unk_id()
    pad = self._id_or_none(self.sp.pad_id())
    self.pad_id: int = self.unk_id if pad is None else pad
    self.mask_id = self._piece_id(MASK_TOKEN)
    sentinels = [self._piece_id(f"<extra_id_{i}>") for i in range(NUM_SENTINELS)]
    self.sentinel_ids: tuple[int, ...] = tuple(s for s in sentinels if s is not None)
    self.system_id, self.user_id, self.assistant_id, self.end_id = (
      self._piece_id(t) for t in ROLE_TOKENS
    )
    self.role_ids = {
      "system": self.system_id,
      "user": self.user_id,
      "assistant": self.assistant_id,
      "end": self.end_id,
    }
    with open(self.path, "rb") as f:
      self.fingerprint = hashlib.sha1(f.read()).hexdigest()[:12]

  @staticmethod
  def _id_or_none(i: int) -> int | None:
    return i if i >= 0 else None

  def _piece_id(self, piece: str) -> int | None:
    i = self.sp.piece_to_id(piece)
    return i if i != self.unk_id and self.sp.id_to_piece(i) == piece else None

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` (no bos/eos added)."""
    return self.sp.encode(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    """Token ids of many texts at once (multi-threaded inside sentencepiece)."""
    return self.sp.encode(list(texts), num_threads=num_threads or (os.cpu_count() or 1))

  def decode(self, ids) -> str:
    """Text of token ids; pad/bos/eos and other control ids decode to ""."""
    if isinstance(ids, np.ndarray):
      ids = ids.tolist()
    return self.sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    """The vocabulary piece of one id."""
    return self.sp.id_to_piece(int(i))

  def __repr__(self) -> str:
    return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str) -> Tokenizer:
  """Loads a sentencepiece .model file; raises DataConfigError if it is missing or bad."""
  full = os.path.expanduser(path)
  if not os.path.isfile(full):
    raise DataConfigError(
      f"tokenizer {path} does not exist; give a sentencepiece .model "
      "path or set config.data.tokenizer='' to train one"
    )
  try:
    return Tokenizer(full)
  except (RuntimeError, OSError) as e:
    raise DataConfigError(
      f"tokenizer {path} is not a sentencepiece model ({e}); retrain it or fix config.data.tokenizer"
    ) from None


def _lines(texts: Iterable[str], max_docs: int | None) -> Iterator[str]:
  """Splits documents into non-empty lines of at most _MAX_LINE_CHARS characters."""
  for n, text in enumerate(texts):
    if max_docs is not None and n >= max_docs:
      return
    for line in text.split("\n"):
      for i in range(0, len(line), _MAX_LINE_CHARS):
        piece = line[i : i + _MAX_LINE_CHARS]
        if piece.strip():
          yield piece


def _corpus_texts(corpus) -> Iterable[str]:
  if isinstance(corpus, (str, os.PathLike)):
    paths = config_lib.split_files(os.fspath(corpus))
    return (doc for p in paths for doc in textfiles.file_documents(p, "text", False)[0])
  return corpus


def train_tokenizer(
  corpus,
  out_prefix: str,
  vocab_size: int = 2048,
  model_type: str = "unigram",
  byte_fallback: bool = True,
  max_docs: int | None = None,
) -> Tokenizer:
  """Trains a sentencepiece model and writes `out_prefix.model` atomically.

  corpus: an iterable of document strings, or a path / glob / directory
  (str) of .txt or .jsonl files (jsonl field "text").
  Raises DataConfigError when the corpus is empty or too small for vocab_size.
  """
  if model_type not in config_lib.TOKENIZER_TYPES:
    raise DataConfigError(f"model_type={model_type!r} must be one of {config_lib.TOKENIZER_TYPES}")
  if vocab_size < config_lib.MIN_VOCAB_SIZE:
    raise DataConfigError(
      f"vocab_size={vocab_size} is too small: "
      f"{config_lib.RESERVED_IDS} ids are reserved; set vocab_size >= "
      f"{config_lib.MIN_VOCAB_SIZE}"
    )
  lines = list(_lines(_corpus_texts(corpus), max_docs))
  if not lines:
    raise DataConfigError(f"tokenizer corpus for {out_prefix} is empty; give it text")
  start = time.time()
  print(
    f"[llmrl.data] training {model_type} tokenizer, vocab {vocab_size}, on "
    f"{len(lines)} lines -> {out_prefix}.model",
    flush=True,
  )
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0,
      eos_id=1,
      bos_id=2,
      unk_id=3,
      pad_piece="<pad>",
      eos_piece="</s>",
      bos_piece="<s>",
      unk_piece="<unk>",
      user_defined_symbols=list(USER_SYMBOLS),
      byte_fallback=byte_fallback,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      split_digits=True,
      character_coverage=0.9995,
      input_sentence_size=2_000_000,
      shuffle_input_sentence=True,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
  except RuntimeError as e:
    m = _TOO_HIGH.search(str(e))
    if m:
      raise DataConfigError(
        f"vocab_size={m.group(1)} is larger than this corpus supports (at most "
        f"{m.group(2)} pieces); set config.data.vocab_size <= {m.group(2)} or add text"
      ) from None
    raise DataConfigError(f"sentencepiece failed for {out_prefix}: {e}") from None
  out_dir = os.path.dirname(os.path.abspath(out_prefix))
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".model")
  with os.fdopen(fd, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, out_prefix + ".model")  # Atomic: readers never see a partial file.
  print(f"[llmrl.data] trained tokenizer in {time.time() - start:.1f}s", flush=True)
  return Tokenizer(out_prefix + ".model")


def get_tokenizer(cfg) -> Tokenizer:
  """Loads config.data.tokenizer, or trains one on the dataset's training split (once, cached).

  The trained model is cache_dir/tokenizers/<dataset key>-<type><vocab>.model;
  a file lock makes concurrent processes train it only once.
  """
  from llmrl.data import builders  # Late import: builders imports TFDS.

  config_lib.validate_config(cfg)
  if cfg.tokenizer:
    return load_tokenizer(cfg.tokenizer)
  train_split = "pretrain"  # "train" for text_files and TFDS names.
  source = builders.open_split(cfg, train_split)
  cache_dir = os.path.expanduser(cfg.cache_dir)
  prefix = os.path.join(
    cache_dir, "tokenizers", f"{source.key}-{cfg.tokenizer_type}{cfg.vocab_size}"
  )
  lock = os.path.join(cache_dir, "locks", os.path.basename(prefix) + ".lock")
  with builders.file_lock(lock):
    if os.path.isfile(prefix + ".model"):
      return Tokenizer(prefix + ".model")
    return train_tokenizer(
      source.texts(stop=cfg.tokenizer_max_docs), prefix, cfg.vocab_size, cfg.tokenizer_type
    )
