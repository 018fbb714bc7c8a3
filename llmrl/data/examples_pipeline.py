"""Batches of fixed-shape examples (SFT chats, ranked responses, ...) with exact resume.

The same scheme as the packed LM pipeline (pipeline.py): epoch e visits the N
examples in a permutation drawn from PCG64 seeded by (seed, e); global example
g is example perm_{g // N}[g % N]; global batch k is examples [k*G, (k+1)*G)
with G = batch_size * shard_count, and shard i takes its batch_size of them.
The iterator state is the next batch index, shared by every host.
"""

from __future__ import annotations

import collections
import sys
import threading

import numpy as np

from llmrl.data.config import DataConfigError
from llmrl.data.pipeline import LMBatchIterator


class ExampleBatches:
  """Random-access source: index k -> this shard's part of global batch k."""

  def __init__(self, arrays: dict, batch_size: int, shard_index: int, shard_count: int,
               seed: int):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise DataConfigError(f"example arrays have different lengths {sizes}")
    self.arrays = arrays
    self.num_examples = next(iter(sizes.values()))
    if self.num_examples == 0:
      raise DataConfigError("no examples to batch; check the split and its filters")
    first = next(iter(arrays.values()))
    self.seq_len = int(first.shape[1]) if first.ndim > 1 else 0
    self.batch_size, self.seed = batch_size, seed
    self.shard_index, self.shard_count = shard_index, shard_count
    self.global_batch_size = batch_size * shard_count
    self.rows_per_epoch = self.num_examples
    self.tokens_per_epoch = self.num_examples * max(self.seq_len, 1)
    self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize  # Infinite: epochs repeat.

  def _perm(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._perms:
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        self._perms[epoch] = rng.permutation(self.num_examples)
        while len(self._perms) > 3:
          self._perms.popitem(last=False)
      return self._perms[epoch]

  def __getitem__(self, k: int) -> dict:
    first = k * self.global_batch_size + self.shard_index * self.batch_size
    g = np.arange(first, first + self.batch_size, dtype=np.int64)
    epochs, pos = np.divmod(g, self.num_examples)
    idx = np.array([self._perm(int(e))[p] for e, p in zip(epochs, pos)])
    return {k: v[idx] for k, v in self.arrays.items()}


def example_batches(arrays: dict, *, batch_size: int, shard_index: int = 0,
                    shard_count: int = 1, seed: int = 0, key: str = "examples",
                    prefetch: int = 2) -> LMBatchIterator:
  """Infinite, resumable iterator of this shard's batches of `arrays` ([N, ...] each)."""
  if batch_size < 1:
    raise DataConfigError(f"batch_size={batch_size} must be >= 1")
  source = ExampleBatches(arrays, batch_size, shard_index, shard_count, seed)
  return LMBatchIterator(source, prefetch, key)
