"""Encoder-decoder decoding (llmrl T5 through Seq2SeqDecoder) against transformers' generate.

A tiny random T5ForConditionalGeneration (weights scaled up so argmaxes are
not near-ties; v1.0 ReLU + tied embeddings and v1.1 gated-GELU + untied head)
is saved with save_pretrained and imported with llmrl.interop.hf.load. The
prompts (encoder inputs) have different lengths and are left-padded.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmrl import decoding
from llmrl.interop import hf
from tests.helpers import generated_rows
from llmrl.models.t5 import T5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 61
PAD = 0  # T5: pad = decoder start
NEW = 10
PROMPTS = [[5, 9, 14, 3, 22, 7], [31, 2], [44, 17, 8, 50], [12, 12, 40, 1, 6]]


def _hf_model(proj: str):
  torch.manual_seed(0)
  cfg = transformers.T5Config(
    vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
    feed_forward_proj=proj, tie_word_embeddings=proj == "relu", pad_token_id=PAD,
    decoder_start_token_id=PAD, eos_token_id=1, dropout_rate=0.0,
  )
  model = transformers.T5ForConditionalGeneration(cfg)
  model.eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.5 * torch.randn_like(p))
  return model


def _hf_generate(model, eos, **kw):
  p = max(len(r) for r in PROMPTS)
  ids = torch.tensor([[PAD] * (p - len(r)) + r for r in PROMPTS])
  mask = torch.tensor([[0] * (p - len(r)) + [1] * len(r) for r in PROMPTS])
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                         do_sample=False, eos_token_id=eos, pad_token_id=PAD,
                         return_dict_in_generate=True, output_scores=True, **kw)
  rows = []
  for row in out.sequences[:, 1:].numpy():  # drop the decoder start token
    row = row.tolist()
    rows.append(row[: row.index(eos) + 1] if eos in row else [t for t in row])
  scores = None if out.get("sequences_scores") is None else out.sequences_scores.numpy()
  return rows, scores


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def setup(request, tmp_path_factory):
  """(HF model, llmrl T5, params, an eos id that some greedy row emits early)."""
  ref = _hf_model(request.param)
  path = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(path)
  model, params = hf.load(path)
  assert isinstance(model, T5)
  free, _ = _hf_generate(ref, None)
  # The token found at steps 1..NEW-2 of the most rows (so EOS really ends rows early).
  eos = max(range(1, VOCAB), key=lambda v: sum(v in r[1 : NEW - 1] for r in free))
  return ref, model, params, eos


def test_t5_greedy_matches_transformers(setup):
  ref, model, params, eos = setup
  want, _ = _hf_generate(ref, eos)
  out = decoding.generate(model, params, PROMPTS, max_new_tokens=NEW, eos_id=eos, pad_id=PAD)
  got = generated_rows(out, PAD)
  assert got == want
  assert any(len(r) < NEW for r in got)  # EOS really ended a row


def test_t5_beam_matches_transformers(setup):
  ref, model, params, eos = setup
  want, want_scores = _hf_generate(ref, eos, num_beams=4, num_return_sequences=2,
                                   early_stopping=True, length_penalty=1.0)
  out = decoding.generate(model, params, PROMPTS, max_new_tokens=NEW, method="beam",
                          num_beams=4, num_return_sequences=2, early_stopping=True,
                          eos_id=eos, pad_id=PAD)
  assert generated_rows(out, PAD) == want
  # Sums of up to NEW float32 log-probs of large random logits (torch vs XLA kernels).
  np.testing.assert_allclose(np.asarray(out.scores), want_scores, atol=5e-4, rtol=0)


def test_t5_cached_steps_equal_a_full_teacher_forced_pass(setup):
  """Each cached step's log-prob equals the uncached decoder run over the whole output."""
  _, model, params, _ = setup
  out = decoding.generate(model, params, PROMPTS, max_new_tokens=NEW, eos_id=None, pad_id=PAD)
  tokens = np.asarray(out.tokens)  # [b, NEW]
  p = max(len(r) for r in PROMPTS)
  ids = np.array([[PAD] * (p - len(r)) + r for r in PROMPTS])
  mask = (np.cumsum(ids != PAD, 1) > 0).astype(np.int32)
  dec_in = np.concatenate([np.full((len(ids), 1), PAD), tokens[:, :-1]], 1)  # shifted right
  logits = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(dec_in),
                       jnp.asarray(mask))  # [b, NEW, vocab]
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
  np.testing.assert_array_equal(logp.argmax(-1), tokens)
  chosen = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  # float32 rounding only: the scaled-up random weights make large residual streams
  # (measured max |difference| 2.2e-4 with logits up to ~9; a wrong cache slot or bias is O(1)).
  np.testing.assert_allclose(np.asarray(out.logprobs), chosen, atol=5e-4, rtol=0)


def test_t5_uncached_request_is_a_clear_error(setup):
  _, model, params, _ = setup
  with pytest.raises(ValueError, match="use_cache=False: T5 decoding has only the cached path"):
    decoding.generate(model, params, PROMPTS, max_new_tokens=4, eos_id=1, pad_id=PAD,
                      use_cache=False)
