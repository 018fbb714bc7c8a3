"""BERT and T5 example streams (llmrl.tasks.examples): format, determinism, shards, resume."""

import numpy as np
import pytest

from llmrl import data
from llmrl.objectives.mlm import special_ids
from llmrl.tasks.examples import bert_batches, t5_batches


@pytest.fixture(scope="module")
def cfg(data_cache):
  c = data.default_config()
  c.cache_dir = data_cache
  c.prefetch = 0
  return c


@pytest.fixture(scope="module")
def tok(cfg):
  return data.get_tokenizer(cfg)


def _bert(cfg, tok, **kw):
  return bert_batches(cfg, tok, **{**dict(batch_size=4, seq_len=64, seed=0), **kw})


def _t5(cfg, tok, **kw):
  return t5_batches(cfg, tok, **{**dict(batch_size=4, inputs_len=48, seed=0), **kw})


def _same(a, b):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("make", [_bert, _t5])
def test_deterministic_shard_exact_and_resumable(cfg, tok, make):
  it = make(cfg, tok, batch_size=4)
  batches = [next(it) for _ in range(3)]
  again = make(cfg, tok, batch_size=4)
  _same(batches[0], next(again))
  # Two hosts with 2 rows each build the same global batch.
  shards = [make(cfg, tok, batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
  for b in batches:
    parts = [next(s) for s in shards]
    _same(b, {k: np.concatenate([p[k] for p in parts]) for k in b})
  # Resume from a saved state.
  state = it.get_state()
  assert state["next_batch"] == 3
  fresh = make(cfg, tok, batch_size=4)
  fresh.set_state(state)
  _same(next(it), next(fresh))
  other_seed = make(cfg, tok, batch_size=4, seed=1)
  assert not np.array_equal(next(other_seed)["inputs"], batches[0]["inputs"])
  with pytest.raises(data.DataConfigError, match="seed"):
    other_seed.set_state(state)


def test_bert_examples(cfg, tok):
  docs = data.tokenized(cfg, tok)
  texts = [tuple(docs.doc(d)[1:-1]) for d in range(docs.num_docs)]
  special = set(special_ids(tok))
  it = _bert(cfg, tok, batch_size=16)
  labels = []
  for _ in range(4):
    b = next(it)
    for i in range(16):
      inp, tgt, w = b["inputs"][i], b["targets"][i], b["weights"][i]
      n = int(b["segment_ids"][i].sum())
      orig = np.where(w > 0, tgt, inp)[:n]  # the unmasked example
      seps = np.flatnonzero(orig == tok.eos_id)
      assert orig[0] == tok.bos_id and len(seps) == 2 and seps[1] == n - 1
      types = b["token_type_ids"][i]
      assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 : n] == 1).all()
      assert not any(int(t) in special for t in tgt[w > 0])
      assert w.sum() == np.floor(sum(int(t) not in special for t in orig) * 0.15 + 0.5)
      a, bb = tuple(orig[1 : seps[0]]), tuple(orig[seps[0] + 1 : n - 1])
      contiguous = any(_contains(t, a + bb) for t in texts)
      label = int(b["nsp_labels"][i])
      labels.append(label)
      if label == 0:
        assert contiguous  # "is next": A then B, as in one document
  assert 0.25 < np.mean(labels) < 0.75


def _contains(text, part):
  n = len(part)
  return any(text[j : j + n] == part for j in range(len(text) - n + 1))


def test_t5_examples(cfg, tok):
  docs = data.tokenized(cfg, tok)
  texts = [tuple(docs.doc(d)[1:-1]) for d in range(docs.num_docs)]
  sentinels = set(tok.sentinel_ids)
  b = next(_t5(cfg, tok, batch_size=8))
  assert b["inputs"].shape == (8, 48) and b["targets"].shape == b["decoder_inputs"].shape
  for i in range(8):
    inp = b["inputs"][i][b["segment_ids"][i] > 0]
    tgt = b["targets"][i][b["weights"][i] > 0]
    assert inp[-1] == tok.eos_id and tgt[-1] == tok.eos_id
    np.testing.assert_array_equal(b["decoder_inputs"][i][1 : len(tgt)], tgt[:-1])
    assert b["decoder_inputs"][i][0] == tok.pad_id
    spans, cur = {}, None
    for t in tgt[:-1]:
      if int(t) in sentinels:
        cur = int(t)
        spans[cur] = []
      else:
        spans[cur].append(int(t))
    rebuilt = tuple(
      x for t in inp[:-1] for x in (spans[int(t)] if int(t) in sentinels else [int(t)])
    )
    assert any(_contains(t, rebuilt) for t in texts)  # a window of one document
