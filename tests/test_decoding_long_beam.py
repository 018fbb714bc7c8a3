"""Long beam search (70 new tokens) against transformers.

Sequences and scores must equal transformers' `generate` on a tiny random
GPT-2 both when every beam runs to max_new_tokens and when EOS ends the
search mid-way (cache reordering over many steps of a long cache).
"""

import numpy as np
import pytest

from llmrl import decoding
from llmrl.interop import hf
from tests.helpers import generated_rows, left_pad_torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, PAD, NEW = 61, 60, 70
PROMPTS = [[5, 9, 14, 3, 22, 7], [31, 2], [44, 17, 8, 50]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=96, n_embd=32, n_layer=2, n_head=4)
  ref = transformers.GPT2LMHeadModel(cfg).eval()
  with torch.no_grad():  # large random weights: no near-ties between beams
    for name, p in ref.named_parameters():
      if "ln" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.4 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("gpt2")
  ref.save_pretrained(path)
  model, params = hf.load(path)
  return ref, model, params


def _hf_beam(ref, eos, **kw):
  ids, mask = left_pad_torch(PROMPTS, PAD)
  p = ids.shape[1]
  with torch.no_grad():
    out = ref.generate(
      input_ids=ids,
      attention_mask=mask,
      max_new_tokens=NEW,
      do_sample=False,
      num_beams=4,
      eos_token_id=eos,
      pad_token_id=PAD,
      return_dict_in_generate=True,
      output_scores=True,
      **kw,
    )
  rows = []
  for row in out.sequences[:, p:].numpy().tolist():  # cut after the first EOS
    rows.append(row[: row.index(eos) + 1] if eos in row else row)
  return rows, out.sequences_scores.numpy()


def _ours(model, params, eos, **kw):
  out = decoding.generate(
    model,
    params,
    PROMPTS,
    max_new_tokens=NEW,
    method="beam",
    num_beams=4,
    eos_id=eos,
    pad_id=PAD,
    **kw,
  )
  return generated_rows(out, PAD), np.asarray(out.scores)


@pytest.mark.parametrize("case", ["full_length", "eos_midway"])
def test_long_beam_matches_transformers(setup, case):
  ref, model, params = setup
  if case == "full_length":  # EOS suppressed: every beam runs to max_new_tokens
    kw = dict(min_new_tokens=NEW, early_stopping=False, num_return_sequences=2)
    eos = 0
  else:  # a frequent token as EOS, allowed from step 36
    free, _ = _hf_beam(ref, None)
    eos = free[0][40]
    kw = dict(min_new_tokens=36, early_stopping=True, num_return_sequences=2)
  want, want_scores = _hf_beam(ref, eos, **kw)
  got, scores = _ours(model, params, eos, **kw)
  if case == "full_length":
    assert all(len(r) == NEW for r in got)
  else:
    assert any(33 < len(r) < NEW for r in got)  # some row ended midway
  assert got == want
  np.testing.assert_allclose(scores, want_scores, atol=1e-4, rtol=0)
