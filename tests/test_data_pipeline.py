"""Tests of the packed LM pipeline: packing invariants, sharding, determinism, resume."""

import json

import numpy as np
import pytest

from llmrl import data

KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = data.default_config()
  c.cache_dir = str(tmp_path_factory.mktemp("cache"))
  return c


@pytest.fixture(scope="module")
def tok(cfg):
  return data.get_tokenizer(cfg)


def _batches(it, n):
  return [next(it) for _ in range(n)]


def _epoch_rows(cfg, tok, seq_len, seed=0, epoch=0):
  """All rows of one epoch, read through the iterator (batch_size 7, any remainder)."""
  it = data.lm_batches(cfg, tok, batch_size=7, seq_len=seq_len, seed=seed)
  R = it.rows_per_epoch
  bs = _batches(it, -(-(R * (epoch + 1)) // 7))
  out = {k: np.concatenate([b[k] for b in bs])[R * epoch : R * (epoch + 1)] for k in KEYS}
  return out, it


def test_batch_format(cfg, tok):
  it = data.lm_batches(cfg, tok, batch_size=4, seq_len=32, seed=0)
  b = next(it)
  assert set(b) == set(KEYS)
  for k in KEYS:
    assert b[k].shape == (4, 32)
  assert b["weights"].dtype == np.float32
  for k in ("inputs", "targets", "segment_ids", "positions"):
    assert b[k].dtype == np.int32
  assert b["inputs"][0, 0] == tok.bos_id and b["positions"][0, 0] == 0


@pytest.mark.parametrize("seq_len", [2, 16, 256])
def test_packing_invariants_over_an_epoch(cfg, tok, seq_len):
  toks = data.tokenized(cfg, tok)
  rows, it = _epoch_rows(cfg, tok, seq_len)
  inp, tgt, w = rows["inputs"], rows["targets"], rows["weights"]
  seg, pos = rows["segment_ids"], rows["positions"]
  valid = seg > 0
  # Padding only at the end of the last row, and it is inert.
  assert valid[:-1].all()
  assert (inp[~valid] == tok.pad_id).all() and (w[~valid] == 0).all()
  assert (pos[~valid] == 0).all()
  # No token lost or duplicated: the stream is the epoch's documents, in some order.
  stream = inp[valid]
  perm, starts = it.source.epoch_order(0)
  expected = np.concatenate([toks.doc(d) for d in perm])
  np.testing.assert_array_equal(stream, expected)
  assert sorted(perm.tolist()) == list(range(toks.num_docs))
  assert len(stream) == toks.num_tokens
  # Targets: next token of the same document, weight 1; weight 0 on every eos.
  flat_t, flat_w = tgt[valid], w[valid]
  doc_end = np.zeros(len(stream), bool)
  doc_end[starts[1:] - 1] = True
  assert (flat_w[doc_end] == 0).all() and (flat_w[~doc_end] == 1).all()
  np.testing.assert_array_equal(flat_t[~doc_end], stream[1:][~doc_end[:-1]])
  assert (stream[doc_end] == tok.eos_id).all()
  # Within a row: segments are 1, 2, 3, ...; positions restart at 0 per segment;
  # targets equal the next input inside a segment; weights zero across boundaries.
  for r in range(len(inp)):
    s, p = seg[r][valid[r]], pos[r][valid[r]]
    assert s[0] == 1 and set(np.diff(s)) <= {0, 1}
    new = np.r_[True, np.diff(s) == 1]
    assert (p[new] == 0).all() and (np.diff(p)[~new[1:]] == 1).all()
    same = (seg[r][:-1] == seg[r][1:]) & valid[r][1:]
    np.testing.assert_array_equal(tgt[r][:-1][same], inp[r][1:][same])
    boundary = (seg[r][:-1] != seg[r][1:]) & valid[r][:-1]
    # A segment that ends inside a row ends its document.
    assert (w[r][:-1][boundary] == 0).all()


def test_long_documents_are_chunked(cfg, tok):
  toks = data.tokenized(cfg, tok)
  longest = int(np.diff(toks.offsets).max())
  rows, _ = _epoch_rows(cfg, tok, 8)
  assert longest > 8
  assert rows["positions"].max() == 7  # Chunks restart positions each row.


def test_epochs_reshuffle_and_seeds_are_deterministic(cfg, tok):
  e0, it = _epoch_rows(cfg, tok, 64, epoch=0)
  e1, _ = _epoch_rows(cfg, tok, 64, epoch=1)
  assert not np.array_equal(e0["inputs"], e1["inputs"])
  assert sorted(e0["inputs"].ravel().tolist()) == sorted(e1["inputs"].ravel().tolist())
  a = _batches(data.lm_batches(cfg, tok, batch_size=3, seq_len=64, seed=5), 4)
  b = _batches(data.lm_batches(cfg, tok, batch_size=3, seq_len=64, seed=5), 4)
  c = _batches(data.lm_batches(cfg, tok, batch_size=3, seq_len=64, seed=6), 4)
  for x, y in zip(a, b):
    for k in KEYS:
      np.testing.assert_array_equal(x[k], y[k])
  assert not all(np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


@pytest.mark.parametrize("shards", [2, 4])
def test_shards_concatenate_to_the_global_batch(cfg, tok, shards):
  B = 3
  whole = _batches(data.lm_batches(cfg, tok, batch_size=B * shards, seq_len=48, seed=1), 30)
  parts = [
    _batches(
      data.lm_batches(
        cfg, tok, batch_size=B, seq_len=48, shard_index=i, shard_count=shards, seed=1
      ),
      30,
    )
    for i in range(shards)
  ]
  for k, batch in enumerate(whole):
    for key in KEYS:
      joined = np.concatenate([parts[i][k][key] for i in range(shards)])
      np.testing.assert_array_equal(joined, batch[key])
  # Disjoint: each shard's rows are distinct global rows (compare row contents + index).
  rows = [(k, i, r) for k in range(30) for i in range(shards) for r in range(B)]
  assert len(set(rows)) == len(rows)
  first = {parts[0][k]["inputs"][r].tobytes() for k in range(5) for r in range(B)}
  second = {parts[1][k]["inputs"][r].tobytes() for k in range(5) for r in range(B)}
  assert not first & second


@pytest.mark.parametrize("k", [0, 1, 7, 40])
def test_resume_is_exact(cfg, tok, k):
  it = data.lm_batches(cfg, tok, batch_size=4, seq_len=64, seed=3)
  _batches(it, k)
  state = json.loads(json.dumps(it.get_state()))
  expected = _batches(it, 5)
  fresh = data.lm_batches(cfg, tok, batch_size=4, seq_len=64, seed=3)
  fresh.set_state(state)
  for x, y in zip(expected, _batches(fresh, 5)):
    for key in KEYS:
      np.testing.assert_array_equal(x[key], y[key])
  assert state["next_batch"] == k


def test_resume_with_other_shard_count(cfg, tok):
  it = data.lm_batches(cfg, tok, batch_size=4, seq_len=32, seed=2)
  _batches(it, 6)
  state = it.get_state()
  want = next(it)
  halves = []
  for i in range(2):
    h = data.lm_batches(cfg, tok, batch_size=2, seq_len=32, shard_index=i, shard_count=2, seed=2)
    h.set_state(state)
    halves.append(next(h))
  np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]), want["inputs"])


def test_resume_rejects_mismatched_state(cfg, tok):
  it = data.lm_batches(cfg, tok, batch_size=4, seq_len=32, seed=2)
  state = it.get_state()
  other = data.lm_batches(cfg, tok, batch_size=4, seq_len=64, seed=2)
  with pytest.raises(data.DataConfigError, match="seq_len"):
    other.set_state(state)
  other = data.lm_batches(cfg, tok, batch_size=4, seq_len=32, seed=9)
  with pytest.raises(data.DataConfigError, match="seed"):
    other.set_state(state)


def test_no_prefetch_gives_same_batches(cfg, tok):
  a = _batches(data.lm_batches(cfg, tok, batch_size=2, seq_len=40, seed=4), 3)
  c = cfg.copy_and_resolve_references()
  c.prefetch = 0
  b = _batches(data.lm_batches(c, tok, batch_size=2, seq_len=40, seed=4), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_validation_split_and_default_seed(cfg, tok):
  it = data.lm_batches(cfg, tok, batch_size=2, seq_len=64, split="validation")
  b = next(it)
  assert b["inputs"].shape == (2, 64)
  assert it.get_state()["seed"] == cfg.shuffle_seed
