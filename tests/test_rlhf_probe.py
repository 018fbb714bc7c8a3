"""Knowledge-aware SFT: the probe's object probability and the relabelling it drives."""

import jax
import numpy as np
import pytest

from llmrl import data
from llmrl.config import ConfigError
from llmrl.models import GPT, GPTConfig
from llmrl.rlhf import probe, sft
from configs import sft as sft_config


@pytest.fixture(scope="module")
def setup(data_cache):
  cfg = data.default_config()
  cfg.cache_dir = data_cache
  cfg.world_size = "tiny"
  tok = data.get_tokenizer(cfg)
  model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=64, num_layers=1, d_model=32,
                        num_heads=2, d_ff=64))
  params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  examples = data.examples(cfg, "sft")
  return tok, model, params, examples


def _softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_object_probability_matches_unbatched_forward(setup):
  tok, model, params, examples = setup
  known = [ex for ex in examples if ex["known"]][:20]  # two batches of 16, one partly padding
  got = probe.object_probability(model, params, tok, known, batch_size=16)
  rows, spans = probe.object_spans(tok, known)
  for ex, row, (a, b), p in zip(known, rows, spans, got):
    # The span is the object's tokens: decoding it gives the object back.
    assert tok.decode(row[a:b]).strip() == ex["object"]
    assert tok.decode(row[1:a]).strip() == ex["response"][:ex["response"].find(ex["object"])].strip()
    # Independent: one unpadded row, float64 softmax, product of the object tokens' probabilities.
    probs = _softmax64(model.apply({"params": params}, np.asarray([row]))[0])
    want = np.prod([probs[t - 1, row[t]] for t in range(a, b)])
    np.testing.assert_allclose(p, want, rtol=2e-4)
    assert 0.0 < p < 1.0


def test_decline_unknown_relabels_below_threshold_only(setup):
  tok, model, params, examples = setup
  examples = examples[:40]
  n_known = sum(ex["known"] for ex in examples)
  assert 0 < n_known < len(examples)
  every, stats = probe.decline_unknown(examples, model, params, tok, below=1.0)
  assert stats == {"known": n_known, "declined": n_known,
                   "median_probability": stats["median_probability"]}
  for old, new in zip(examples, every):
    assert new["response"] == data.labeler.IDK
    assert new["text"] == data.chat.render(old["prompt"], data.labeler.IDK)
    assert new["prompt"] == old["prompt"] and new["object"] == old["object"]
  none, stats = probe.decline_unknown(examples, model, params, tok, below=1e-300)
  assert stats["declined"] == 0 and none == examples
  # A threshold at the median declines the known answers below it, nothing else.
  probs = probe.object_probability(model, params, tok, [ex for ex in examples if ex["known"]])
  tau = float(np.median(probs))
  some, stats = probe.decline_unknown(examples, model, params, tok, below=tau)
  assert stats["declined"] == int(np.sum(probs < tau)) > 0
  changed = [i for i, (a, b) in enumerate(zip(examples, some)) if a != b]
  assert len(changed) == stats["declined"]
  assert all(examples[i]["known"] and some[i]["probe_probability"] < tau for i in changed)


@pytest.mark.parametrize("below, init_from, msg", [
    (-0.1, "", "must be in \\[0, 1\\]"),
    (1.5, "/nowhere", "must be in \\[0, 1\\]"),
    (0.2, "", "set config.init_from to a pretraining workdir"),
])
def test_decline_below_config_errors(below, init_from, msg):
  c = sft_config.get_config("tiny")
  c.decline_below, c.init_from = below, init_from
  with pytest.raises(ConfigError, match=msg):
    sft.make_task(c)
