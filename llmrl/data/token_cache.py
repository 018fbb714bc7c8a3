"""Token ids of a prepared split, computed once per (split, tokenizer) and memory-mapped.

Layout of cache_dir/tokens/<dataset key>-<split>-<tokenizer fingerprint>/:
  tokens.bin   all documents' ids back to back, each as [bos] + text ids + [eos]
               (uint16 when the vocabulary fits, else int32)
  offsets.npy  int64 [num_docs + 1]: document d is tokens[offsets[d]:offsets[d+1]]
  meta.json    dtype and counts; written last
The directory is built under a temporary name and renamed when complete, under
a file lock, so a half-written cache never looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from itertools import chain

import numpy as np

from llmrl.data.builders import DocSource, file_lock
from llmrl.data.config import DataConfigError
from llmrl.data.tokenizer import Tokenizer

_CHUNK_DOCS = 8192


@dataclasses.dataclass
class TokenizedSplit:
  """Flat token ids and per-document offsets of one split."""

  tokens: np.ndarray  # [num_tokens] uint16 or int32 (memory-mapped)
  offsets: np.ndarray  # [num_docs + 1] int64
  path: str

  @property
  def num_docs(self) -> int:
    return len(self.offsets) - 1

  @property
  def num_tokens(self) -> int:
    return int(self.offsets[-1])

  def doc(self, d: int) -> np.ndarray:
    """Token ids of document d (with bos and eos)."""
    return np.asarray(self.tokens[self.offsets[d] : self.offsets[d + 1]], dtype=np.int32)


def _load(path: str) -> TokenizedSplit:
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  offsets = np.load(os.path.join(path, "offsets.npy"))
  if meta["num_tokens"]:
    tokens = np.memmap(
      os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],)
    )
  else:
    tokens = np.zeros((0,), meta["dtype"])
  return TokenizedSplit(tokens, offsets, path)


def _build(source: DocSource, tok: Tokenizer, tmp: str) -> None:
  if tok.bos_id is None or tok.eos_id is None:
    raise DataConfigError(
      f"tokenizer {tok.path} has no bos/eos ids; train one with "
      "llmrl.data.train_tokenizer or set config.data.tokenizer=''"
    )
  dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
  n = len(source)
  offsets = np.zeros(n + 1, np.int64)
  start, last_report, done = time.time(), time.time(), 0
  texts = source.texts(chunk=_CHUNK_DOCS)
  with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
    while done < n:
      batch = [next(texts) for _ in range(min(_CHUNK_DOCS, n - done))]
      ids = tok.encode_batch(batch)
      lens = np.fromiter((len(x) + 2 for x in ids), np.int64, len(ids))
      ends = np.cumsum(lens)
      bos, eos = (tok.bos_id,), (tok.eos_id,)
      flat = np.fromiter(chain.from_iterable(chain(bos, x, eos) for x in ids), dtype, int(ends[-1]))
      flat.tofile(f)
      offsets[done + 1 : done + 1 + len(ids)] = offsets[done] + ends
      done += len(ids)
      if time.time() - last_report > 10:
        last_report = time.time()
        print(
          f"[llmrl.data] tokenized {done}/{n} documents "
          f"({offsets[done] / (last_report - start):.0f} tokens/s)",
          flush=True,
        )
  np.save(os.path.join(tmp, "offsets.npy"), offsets)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(
      {
        "dtype": np.dtype(dtype).name,
        "num_docs": n,
        "num_tokens": int(offsets[-1]),
        "tokenizer": tok.path,
        "source": source.key,
        "split": source.split,
      },
      f,
    )


def tokenized_split(source: DocSource, tok: Tokenizer, cache_dir: str) -> TokenizedSplit:
  """Returns the cached token ids of `source` under `tok`, computing them once."""
  cache_dir = os.path.expanduser(cache_dir)
  name = f"{source.key}-{source.split}-{tok.fingerprint}"
  path = os.path.join(cache_dir, "tokens", name)
  if os.path.isfile(os.path.join(path, "meta.json")):
    return _load(path)
  if len(source) == 0:
    raise DataConfigError(
      f"split {source.split!r} of {source.key} has no documents; "
      "choose another config.data.split or add data"
    )
  with file_lock(os.path.join(cache_dir, "locks", name + ".lock")):
    if not os.path.isfile(os.path.join(path, "meta.json")):
      start = time.time()
      print(
        f"[llmrl.data] tokenizing {len(source)} documents of {source.key}/{source.split} -> {path}",
        flush=True,
      )
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".tmp-{name}-")
      try:
        _build(source, tok, tmp)
        try:
          os.rename(tmp, path)
        except OSError:
          # Another host (a shared cache without a shared lock) renamed its copy first.
          if not os.path.isfile(os.path.join(path, "meta.json")):
            raise
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
      print(f"[llmrl.data] tokenized in {time.time() - start:.1f}s", flush=True)
  return _load(path)
