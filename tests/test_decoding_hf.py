"""llmrl.decoding against transformers' generate (the reference runs in PyTorch on CPU).

Tiny random GPT-2 and Llama models (weights scaled up so argmaxes are not
near-ties) are saved with save_pretrained and imported with
llmrl.interop.hf.load. Prompts of different lengths are left-padded on both
sides. The EOS id is chosen from a first reference run so that some rows
really stop early.
"""

import numpy as np
import pytest

from llmrl import decoding
from llmrl.interop import hf
from tests.helpers import generated_rows, left_pad_torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 61
PAD = 60
NEW = 12
PROMPTS = [[5, 9, 14, 3, 22, 7], [31, 2], [44, 17, 8, 50], [12, 12, 40, 1, 6]]


def _hf_model(style: str):
  torch.manual_seed(0)
  if style == "gpt2":
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg)
  else:
    cfg = transformers.LlamaConfig(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=32,
      tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg)
  model.eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ("ln" in name or "norm" in name) and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.4 * torch.randn_like(p))
  return model


def _hf_generate(model, eos, **kw):
  ids, mask = left_pad_torch(PROMPTS, PAD)
  with torch.no_grad():
    out = model.generate(
      input_ids=ids,
      attention_mask=mask,
      max_new_tokens=NEW,
      do_sample=False,
      eos_token_id=eos,
      pad_token_id=PAD,
      return_dict_in_generate=True,
      output_scores=True,
      **kw,
    )
  new = out.sequences[:, ids.shape[1] :].numpy()
  rows = []
  for row in new:  # cut at the first EOS (inclusive); unfinished rows are full length
    row = row.tolist()
    rows.append(row[: row.index(eos) + 1] if eos in row else row)
  scores = None if out.get("sequences_scores") is None else out.sequences_scores.numpy()
  return rows, scores


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request, tmp_path_factory):
  """(HF model, llmrl model, params, eos id that some greedy row emits early)."""
  ref = _hf_model(request.param)
  path = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(path)
  model, params = hf.load(path)
  free_rows, _ = _hf_generate(ref, None)
  return ref, model, params, _pick_eos(free_rows)


def _pick_eos(rows):
  """The token that first appears early (steps 2 to NEW / 2) in most greedy rows."""

  def first(row, v):
    return row.index(v) if v in row else len(row)

  def mid_rows(v):
    starts = [first(r, v) for r in rows]
    return -1 if min(starts) < 2 else sum(s <= NEW // 2 for s in starts)

  return max((v for v in range(VOCAB) if v != PAD), key=mid_rows)


@pytest.mark.parametrize("min_new", [0, 4])
def test_greedy_matches_transformers(setup, min_new):
  ref, model, params, eos = setup
  want, _ = _hf_generate(ref, eos, min_new_tokens=min_new)
  out = decoding.generate(
    model, params, PROMPTS, max_new_tokens=NEW, min_new_tokens=min_new, eos_id=eos, pad_id=PAD
  )
  got = generated_rows(out, PAD)
  assert got == want
  assert any(len(r) < NEW for r in got) or min_new  # EOS really ended a row
  assert all(len(r) > min_new for r in got)


BEAMS = [  # (early_stopping, length_penalty, num_return_sequences, min_new_tokens)
  (True, 1.0, 1, 0),
  (True, 1.0, 2, 0),
  (False, 0.6, 2, 0),
  ("never", 1.5, 3, 2),
]


@pytest.mark.parametrize("early_stopping,length_penalty,nrs,min_new", BEAMS)
def test_beam_matches_transformers(setup, early_stopping, length_penalty, nrs, min_new):
  ref, model, params, eos = setup
  kw = dict(early_stopping=early_stopping, length_penalty=length_penalty)
  want, want_scores = _hf_generate(
    ref, eos, num_beams=4, num_return_sequences=nrs, min_new_tokens=min_new, **kw
  )
  out = decoding.generate(
    model,
    params,
    PROMPTS,
    max_new_tokens=NEW,
    min_new_tokens=min_new,
    method="beam",
    num_beams=4,
    num_return_sequences=nrs,
    eos_id=eos,
    pad_id=PAD,
    **kw,
  )
  got = generated_rows(out, PAD)
  assert got == want
  np.testing.assert_allclose(np.asarray(out.scores), want_scores, atol=1e-4, rtol=0)
  # The score is the length-penalised sum of the returned per-token log-probs.
  lengths = np.asarray(out.lengths, np.float64)
  sums = np.asarray(out.logprobs, np.float64).sum(1)
  np.testing.assert_allclose(sums / lengths**length_penalty, want_scores, atol=1e-4)
