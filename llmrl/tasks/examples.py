"""Pretraining example streams for BERT (MLM + NSP) and T5 (span corruption).

Built on llmrl.data's cached token ids (`data.tokenized`: one [bos] text [eos]
array per document) and the same machinery as the causal-LM pipeline:

  * Global row g of the stream uses document perm_e[g % D] as its source,
    where D is the number of documents and perm_e the epoch e = g // D
    permutation drawn from PCG64(seed, 0, e): every document leads one
    example per epoch, in a new order every epoch.
  * All randomness of row g (NSP partner, MLM positions, noise spans,
    crops) comes from its own Generator PCG64(seed, 1, g), so a row does not
    depend on the batch size, the number of hosts or what came before.
  * Global batch k is rows [k*G, (k+1)*G) (G = global batch size); host i
    builds rows k*G + i*B + [0, B). The iterator is
    `llmrl.data.pipeline.LMBatchIterator` (grain prefetching), whose state is
    the next batch index: checkpointed by the trainer, resumed exactly.
"""

from __future__ import annotations

import collections
import sys
import threading

import numpy as np

from llmrl import data as data_lib
from llmrl.data.config import DataConfigError
from llmrl.data.pipeline import LMBatchIterator
from llmrl.objectives.mlm import mask_tokens, special_ids
from llmrl.objectives.nsp import nsp_pair, pack_pair, sentence_end_ids, split_sentences
from llmrl.objectives.span_corruption import raw_length_for, span_corrupt


class ExampleSource:
  """Random-access source: index k -> this shard's rows of global batch k (one example a row)."""

  def __init__(self, data, batch_size, seq_len, shard_index, shard_count, seed):
    self.tokens = data.tokens
    self.offsets = np.asarray(data.offsets, np.int64)
    self.num_docs = len(self.offsets) - 1
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    self.shard_index, self.shard_count = shard_index, shard_count
    self.global_batch_size = batch_size * shard_count
    self._epochs: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize  # infinite: epochs repeat

  def document_of_row(self, g: int) -> int:
    """The document that leads global row g (see the module docstring)."""
    epoch = g // self.num_docs
    with self._lock:
      perm = self._epochs.get(epoch)
    if perm is None:
      perm = np.random.Generator(np.random.PCG64([self.seed, 0, epoch])).permutation(self.num_docs)
      with self._lock:
        self._epochs[epoch] = perm
        while len(self._epochs) > 3:
          self._epochs.popitem(last=False)
    return int(perm[g % self.num_docs])

  def row_rng(self, g: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([self.seed, 1, g]))

  def text(self, d: int) -> np.ndarray:
    """Token ids of document d without its bos and eos."""
    return np.asarray(self.tokens[self.offsets[d] + 1 : self.offsets[d + 1] - 1], np.int32)

  def example(self, g: int) -> dict:
    raise NotImplementedError

  def __getitem__(self, k: int) -> dict:
    first = k * self.global_batch_size + self.shard_index * self.batch_size
    rows = [self.example(g) for g in range(first, first + self.batch_size)]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


class BertExamples(ExampleSource):
  """[CLS] A [SEP] B [SEP] pairs (50% actual next, 50% random), MLM-masked.

  Row keys: inputs, token_type_ids, segment_ids (1 = token, 0 = pad), targets,
  weights [seq_len]; nsp_labels [] (0 = is next, 1 = random).
  """

  def __init__(self, data, tok, batch_size, seq_len, shard_index, shard_count, seed,
               mask_rate=0.15):  # fmt: skip
    super().__init__(data, batch_size, seq_len, shard_index, shard_count, seed)
    if tok.mask_id is None or tok.bos_id is None or tok.eos_id is None:
      raise DataConfigError(
        f"tokenizer {tok.path} lacks <mask>, <s> or </s>, which BERT pretraining needs; "
        "set config.data.tokenizer='' to train an llmrl tokenizer"
      )
    if seq_len < 8:
      raise DataConfigError(f"BERT examples need seq_len >= 8, got {seq_len}")
    self.tok, self.mask_rate = tok, mask_rate
    self.special = special_ids(tok)
    self.end_ids = sentence_end_ids(tok)

  def example(self, g: int) -> dict:
    tok, rng, d = self.tok, self.row_rng(g), self.document_of_row(g)
    other = None
    if self.num_docs > 1 and rng.random() < 0.5:
      o = int(rng.integers(self.num_docs - 1))
      other = split_sentences(self.text(o + (o >= d)), self.end_ids)
    sentences = split_sentences(self.text(d), self.end_ids)
    a, b, label = nsp_pair(sentences, other, rng, self.seq_len - 3)
    ids, types, mask = pack_pair(a, b, self.seq_len, tok.bos_id, tok.eos_id, tok.pad_id)
    inputs, targets, weights = mask_tokens(
      ids, rng, vocab_size=tok.vocab_size, mask_id=tok.mask_id, special=self.special,
      mask_rate=self.mask_rate, pad_id=tok.pad_id)  # fmt: skip
    return dict(inputs=inputs, token_type_ids=types, segment_ids=mask, targets=targets,
                weights=weights, nsp_labels=np.int32(label))  # fmt: skip


class T5Examples(ExampleSource):
  """Span-corrupted documents: a random window of `raw_len` tokens when longer.

  Row keys: inputs, segment_ids [inputs_len]; decoder_inputs (targets shifted
  right after the start token pad), targets, weights [targets_len].
  """

  def __init__(self, data, tok, batch_size, inputs_len, shard_index, shard_count, seed,
               noise_density=0.15, mean_span_length=3.0):  # fmt: skip
    super().__init__(data, batch_size, inputs_len, shard_index, shard_count, seed)
    if tok.eos_id is None or not tok.sentinel_ids:
      raise DataConfigError(
        f"tokenizer {tok.path} lacks </s> or <extra_id_N> sentinels, which T5 span "
        "corruption needs; set config.data.tokenizer='' to train an llmrl tokenizer"
      )
    self.tok = tok
    self.noise_density, self.mean_span_length = noise_density, mean_span_length
    self.raw_len, self.targets_len = raw_length_for(inputs_len, noise_density, mean_span_length)

  def example(self, g: int) -> dict:
    tok, rng = self.tok, self.row_rng(g)
    text = self.text(self.document_of_row(g))
    if len(text) > self.raw_len:
      start = int(rng.integers(0, len(text) - self.raw_len + 1))
      text = text[start : start + self.raw_len]
    inputs, targets = span_corrupt(text, rng, tok.sentinel_ids, tok.eos_id,
                                   self.noise_density, self.mean_span_length)  # fmt: skip
    enc = np.full(self.seq_len, tok.pad_id, np.int32)
    enc[: len(inputs)] = inputs
    tgt = np.full(self.targets_len, tok.pad_id, np.int32)
    tgt[: len(targets)] = targets
    dec = np.concatenate([[tok.pad_id], tgt[:-1]]).astype(np.int32)  # T5 starts with pad
    return dict(inputs=enc, segment_ids=(np.arange(self.seq_len) < len(inputs)).astype(np.int32),
                decoder_inputs=dec, targets=tgt,
                weights=(np.arange(self.targets_len) < len(targets)).astype(np.float32))  # fmt: skip


def _iterator(
  cfg, source: ExampleSource, split: str | None, tok, objective: str
) -> LMBatchIterator:
  key = f"{objective}/{cfg.name}/{split or cfg.split}/{tok.fingerprint}"
  return LMBatchIterator(source, cfg.prefetch, key)


def bert_batches(cfg, tok, *, batch_size: int, seq_len: int, shard_index: int = 0,
                 shard_count: int = 1, seed: int = 0, split: str | None = None,
                 mask_rate: float = 0.15) -> LMBatchIterator:  # fmt: skip
  """Infinite, checkpointable iterator of BERT MLM + NSP batches for this host's shard."""
  data_lib.validate_batching(batch_size, seq_len, shard_index, shard_count)
  data = data_lib.tokenized(cfg, tok, split)
  source = BertExamples(data, tok, batch_size, seq_len, shard_index, shard_count, seed, mask_rate)
  return _iterator(cfg, source, split, tok, f"bert-mlm{mask_rate}-nsp")


def t5_batches(cfg, tok, *, batch_size: int, inputs_len: int, shard_index: int = 0,
               shard_count: int = 1, seed: int = 0, split: str | None = None,
               noise_density: float = 0.15, mean_span_length: float = 3.0) -> LMBatchIterator:  # fmt: skip
  """Infinite, checkpointable iterator of T5 span-corruption batches for this host's shard."""
  data_lib.validate_batching(batch_size, inputs_len, shard_index, shard_count)
  data = data_lib.tokenized(cfg, tok, split)
  source = T5Examples(data, tok, batch_size, inputs_len, shard_index, shard_count, seed,
                      noise_density, mean_span_length)  # fmt: skip
  return _iterator(cfg, source, split, tok, f"t5-spans{noise_density}x{mean_span_length}")
