"""BERT objectives: MLM masking, NSP pairs and the MLM + NSP loss (references from math / numpy)."""

import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.objectives.mlm import bert_pretraining_loss, mask_tokens, mlm_loss
from llmrl.objectives.nsp import IS_NEXT, RANDOM_NEXT, nsp_pair, pack_pair, split_sentences

VOCAB, MASK = 400, 4
SPECIAL = tuple(range(0, 109))  # pad, eos, bos, unk, <mask>, sentinels, chat markers


def _rows(n_rows=400, length=64, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(109, VOCAB, (n_rows, length))
  ids[:, 0] = 2  # [CLS]
  ids[:, 30] = 1  # [SEP]
  ids[:, -10:] = 0  # padding
  ids[::7, 5] = 5  # a sentinel inside some rows
  return ids


def _mask(ids, seed=1, **kw):
  return mask_tokens(ids, np.random.default_rng(seed), vocab_size=VOCAB, mask_id=MASK,
                     special=SPECIAL, **kw)  # fmt: skip


def test_mask_counts_and_specials():
  ids = _rows()
  inputs, targets, weights = _mask(ids)
  selected = weights.astype(bool)
  candidates = ids >= 109
  np.testing.assert_array_equal(
    selected.sum(1), np.floor(candidates.sum(1) * 0.15 + 0.5)
  )  # exactly 15% (rounded) of the non-special tokens of every row
  assert not (selected & ~candidates).any()  # specials are never selected
  np.testing.assert_array_equal(inputs[~selected], ids[~selected])
  np.testing.assert_array_equal(targets[selected], ids[selected])
  assert (targets[~selected] == 0).all()
  assert inputs.dtype == ids.dtype and weights.dtype == np.float32


def test_mask_80_10_10():
  ids = _rows()
  inputs, _, weights = _mask(ids)
  sel = weights.astype(bool)
  n = sel.sum()  # ~3,200 selections
  masked = (inputs[sel] == MASK).mean()
  kept = (inputs[sel] == ids[sel]).mean()
  replaced = 1 - masked - kept
  # Binomial standard errors are ~0.007 (80%) and ~0.005 (10%): 4.5 sigma bounds.
  assert n > 3000
  assert abs(masked - 0.8) < 0.032 and abs(kept - 0.1) < 0.024 and abs(replaced - 0.1) < 0.024
  rand = sel & (inputs != MASK) & (inputs != ids)
  assert (inputs[rand] >= 109).all()  # random replacements are never special tokens


def test_mask_is_deterministic_per_seed():
  ids = _rows(8)
  a, b = _mask(ids, seed=3), _mask(ids, seed=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], _mask(ids, seed=4)[2])
  with pytest.raises(ValueError, match="mask_rate"):
    _mask(ids, mask_rate=1.5)


def test_split_sentences_and_same_document_pair():
  end = np.array([900])
  doc = np.array([10, 11, 900, 12, 900, 13, 14, 15, 900, 16])
  sents = split_sentences(doc, end)
  assert [s.tolist() for s in sents] == [[10, 11, 900], [12, 900], [13, 14, 15, 900], [16]]
  cuts = set()
  for seed in range(60):
    a, b, label = nsp_pair(sents, None, np.random.default_rng(seed), max_tokens=100)
    assert label == IS_NEXT
    np.testing.assert_array_equal(np.concatenate([a, b]), doc)  # B continues A exactly
    cuts.add(len(a))
  assert cuts == {3, 5, 9}  # every sentence boundary is used


def test_random_pair_and_trimming():
  sents = [np.arange(10, 20), np.arange(20, 30)]
  other = [np.arange(100, 105), np.arange(105, 140)]
  a, b, label = nsp_pair(sents, other, np.random.default_rng(0), max_tokens=100)
  assert label == RANDOM_NEXT
  np.testing.assert_array_equal(a, np.arange(10, 20))
  assert b.tolist() in (list(range(100, 140)), list(range(105, 140)))  # from a sentence start
  a, b, _ = nsp_pair(sents, other, np.random.default_rng(1), max_tokens=12)
  assert len(a) + len(b) == 12 and len(a) == 6 and len(b) == 6
  np.testing.assert_array_equal(a, np.arange(14, 20))  # A loses its start, B its end
  # One-sentence documents are cut in the middle.
  a, b, _ = nsp_pair([np.arange(8)], None, np.random.default_rng(0), max_tokens=20)
  assert a.tolist() == [0, 1, 2, 3] and b.tolist() == [4, 5, 6, 7]


def test_pack_pair():
  ids, types, mask = pack_pair(np.array([7, 8]), np.array([9]), 8, cls_id=2, sep_id=1, pad_id=0)
  assert ids.tolist() == [2, 7, 8, 1, 9, 1, 0, 0]
  assert types.tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
  assert mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
  with pytest.raises(ValueError, match="does not fit"):
    pack_pair(np.arange(5), np.arange(5), 8, 2, 1, 0)


def _log_softmax(x):
  return (
    x
    - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - x.max(-1, keepdims=True)
  )


def test_bert_loss_matches_numpy():
  rng = np.random.default_rng(0)
  mlm = rng.standard_normal((3, 5, 11)).astype(np.float32)
  nsp = rng.standard_normal((3, 2)).astype(np.float32)
  targets = rng.integers(0, 11, (3, 5))
  weights = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 0, 0]], np.float32)
  labels = np.array([0, 1, 1])
  total, (weight, sums) = bert_pretraining_loss(
    jnp.asarray(mlm),
    jnp.asarray(nsp),
    jnp.asarray(targets),
    jnp.asarray(weights),
    jnp.asarray(labels),
  )
  nll = -np.take_along_axis(_log_softmax(mlm), targets[..., None], -1)[..., 0]
  per_example = (nll * weights).sum(1) / weights.sum(1)
  nsp_nll = -_log_softmax(nsp)[np.arange(3), labels]
  assert weight == 3
  np.testing.assert_allclose(total, (per_example + nsp_nll).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["mlm_loss"], per_example.sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["nsp_accuracy"], (nsp.argmax(1) == labels).sum())
  t, (w, _) = mlm_loss(jnp.asarray(mlm), jnp.asarray(targets), jnp.asarray(weights))
  np.testing.assert_allclose(t, (nll * weights).sum(), rtol=1e-5)
  assert w == weights.sum()
