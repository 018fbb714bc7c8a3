"""The causal-LM input pipeline: shuffled, packed, sharded batches with exact resume.

How a batch is made (all deterministic from `seed`):
  * Epoch e visits every document once, in the order of a permutation drawn
    from numpy's PCG64 seeded by (seed, e); a new order every epoch.
  * The epoch's documents ([bos] text [eos], from the token cache) are laid
    end to end into one stream of T tokens, which is cut into
    R = ceil(T / seq_len) rows; the last row is padded. A document that
    crosses a row boundary continues as a new segment at the start of the
    next row (so documents longer than seq_len become chunks); positions
    restart at 0 in every segment. Rows of epoch e+1 follow those of epoch e:
    global row g is row g % R of epoch g // R.
  * Global batch k is global rows [k*G, (k+1)*G) with G = batch_size *
    shard_count; shard i gets rows k*G + i*batch_size + [0, batch_size).
    So shards are disjoint and the global batch is the same whatever the
    number of shards. Every host computes only its own rows (random access:
    a row is found with a binary search over the epoch's document starts).
  * Every document token is an input exactly once per epoch, and every
    token after a bos is a target exactly once: the last position of a row
    whose document continues in the next row predicts that next token.

The random-access batch function is wrapped as a `grain.MapDataset` and read
through grain's prefetching `IterDataset`; its state is the next batch index,
so `set_state` resumes exactly in O(1). Packing is done here with numpy rather
than grain's sequential packers because random access gives per-host shards of
one global stream and constant-time resume, and is vectorised (fast).
"""

from __future__ import annotations

import collections
import sys
import threading

import grain
import numpy as np

from llmrl.data.config import DataConfigError
from llmrl.data.token_cache import TokenizedSplit

STATE_VERSION = 1


class PackedBatches:
  """Random-access source: index k -> this shard's part of global batch k."""

  def __init__(
    self,
    data: TokenizedSplit,
    batch_size: int,
    seq_len: int,
    shard_index: int,
    shard_count: int,
    seed: int,
    pad_id: int,
  ):
    self.tokens = data.tokens
    self.offsets = np.asarray(data.offsets, np.int64)
    self.lengths = np.diff(self.offsets)
    self.num_docs = len(self.lengths)
    self.tokens_per_epoch = int(self.offsets[-1])
    self.batch_size, self.seq_len = batch_size, seq_len
    self.shard_index, self.shard_count = shard_index, shard_count
    self.global_batch_size = batch_size * shard_count
    self.rows_per_epoch = -(-self.tokens_per_epoch // seq_len)
    self.seed, self.pad_id = seed, pad_id
    self._epochs: collections.OrderedDict[int, tuple] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize  # Infinite: epochs repeat.

  def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(permutation of documents, stream start of each in order + [T]) for an epoch."""
    with self._lock:
      if epoch in self._epochs:
        self._epochs.move_to_end(epoch)
        return self._epochs[epoch]
    rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
    perm = rng.permutation(self.num_docs)
    starts = np.zeros(self.num_docs + 1, np.int64)
    np.cumsum(self.lengths[perm], out=starts[1:])
    with self._lock:
      self._epochs[epoch] = (perm, starts)
      while len(self._epochs) > 3:
        self._epochs.popitem(last=False)
    return perm, starts

  def rows(self, global_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Packs the given global row indices into a batch dict of [len(rows), seq_len]."""
    n, L = len(global_rows), self.seq_len
    out = {k: np.zeros((n, L), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    out["weights"] = np.zeros((n, L), np.float32)
    epochs, local = np.divmod(global_rows, self.rows_per_epoch)
    for e in np.unique(epochs):
      sel = np.nonzero(epochs == e)[0]
      self._fill(int(e), local[sel], sel, out)
    return out

  def _fill(self, epoch: int, rows: np.ndarray, sel: np.ndarray, out: dict) -> None:
    perm, starts = self.epoch_order(epoch)
    T, L = self.tokens_per_epoch, self.seq_len
    row_start = rows * L  # [n]
    p = row_start[:, None] + np.arange(L)[None, :]  # [n, L] stream positions
    valid = p < T
    pc = np.minimum(p, T - 1)
    j = np.searchsorted(starts, pc, side="right") - 1  # [n, L] doc index in epoch order
    doc_start = starts[j]
    flat = self.offsets[perm[j]] + (pc - doc_start)  # [n, L] index into tokens
    has_next = valid & (pc + 1 < starts[j + 1])
    nxt = np.minimum(flat + 1, len(self.tokens) - 1)
    toks = self.tokens
    out["inputs"][sel] = np.where(valid, toks[flat], self.pad_id)
    out["targets"][sel] = np.where(has_next, toks[nxt], self.pad_id)
    out["weights"][sel] = has_next
    out["segment_ids"][sel] = np.where(valid, j - j[:, :1] + 1, 0)
    seg_start = np.maximum(doc_start, row_start[:, None])
    out["positions"][sel] = np.where(valid, pc - seg_start, 0)

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    first = k * self.global_batch_size + self.shard_index * self.batch_size
    return self.rows(np.arange(first, first + self.batch_size, dtype=np.int64))


class LMBatchIterator:
  """Infinite iterator of packed batches with a JSON-serialisable, exact state."""

  def __init__(self, source: PackedBatches, prefetch: int, dataset_key: str):
    self.source = source
    self.dataset_key = dataset_key
    options = grain.ReadOptions(num_threads=min(prefetch, 4), prefetch_buffer_size=prefetch)
    self._ds = grain.MapDataset.source(source).to_iter_dataset(options)
    self._it = iter(self._ds)

  def __iter__(self) -> LMBatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  @property
  def rows_per_epoch(self) -> int:
    return self.source.rows_per_epoch

  @property
  def tokens_per_epoch(self) -> int:
    return self.source.tokens_per_epoch

  def _identity(self) -> dict:
    s = self.source
    return {
      "dataset": self.dataset_key,
      "global_batch_size": s.global_batch_size,
      "seq_len": s.seq_len,
      "seed": s.seed,
    }

  def get_state(self) -> dict:
    """State to checkpoint: the next global batch index plus what it depends on."""
    return {
      "version": STATE_VERSION,
      "next_batch": int(self._it.get_state()["next_index"]),
      **self._identity(),
    }

  def set_state(self, state: dict) -> None:
    """Resumes at the saved position (possibly with a different number of shards)."""
    if state.get("version") != STATE_VERSION:
      raise DataConfigError(
        f"data iterator state version {state.get('version')!r} is "
        f"not {STATE_VERSION}; restart the data stream"
      )
    for key, value in self._identity().items():
      if state.get(key) != value:
        raise DataConfigError(
          f"data iterator state was saved with {key}={state.get(key)!r} but this "
          f"pipeline has {key}={value!r}; use the same {key} to resume"
        )
    self._it.set_state({"next_index": int(state["next_batch"])})

  def close(self) -> None:
    """Stops prefetch threads."""
    close = getattr(self._it, "close", None)
    if close:
      close()
