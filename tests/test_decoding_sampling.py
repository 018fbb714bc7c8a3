"""Sampling, log-probs and the KV cache, checked against independent numpy / full-forward references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llmrl import decoding
from llmrl.decoding.adapters import prompt_positions
from llmrl.models import GPT, GPTConfig

PAD, EOS = 0, 1
PROMPTS = [[5, 9, 14, 3, 22, 7], [31, 2], [44, 17, 8, 50]]


def _model(vocab=64, style="gpt2", seed=0):
  cfg = GPTConfig(
    vocab_size=vocab,
    max_len=32,
    num_layers=2,
    d_model=32,
    num_heads=4,
    d_ff=64,
    style=style,
    num_kv_heads=2 if style == "llama" else None,
    init_std=0.3,
  )
  model = GPT(cfg)
  ids = jnp.zeros((1, 4), jnp.int32)
  return model, nn.unbox(model.init({"params": jax.random.key(seed)}, ids))["params"]


def _np_logprobs(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Independent reference: the truncated sampling distribution's log-probs [..., vocab]."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k:
    kth = np.sort(x, axis=-1)[..., -top_k][..., None]
    x = np.where(x < kth, -np.inf, x)
  if top_p < 1.0:
    order = np.argsort(-x, axis=-1)
    xs = np.take_along_axis(x, order, -1)
    p = np.exp(xs - xs.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    drop_sorted = np.cumsum(p, -1) - p >= top_p  # mass strictly before >= top_p
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, -1)
    x = np.where(drop, -np.inf, x)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _full_logits(model, params, prompts, tokens, lengths):
  """Uncached forward over prompt + generated tokens; logits predicting each new token."""
  rows = [
    list(p) + list(t[:n]) for p, t, n in zip(prompts, np.asarray(tokens), np.asarray(lengths))
  ]
  width = max(len(r) for r in rows)
  ids = np.array([[PAD] * (width - len(r)) + r for r in rows], np.int32)
  mask = (np.arange(width)[None] >= width - np.array([len(r) for r in rows])[:, None]).astype(
    np.int32
  )
  logits = model.apply({"params": params}, ids, prompt_positions(jnp.asarray(mask)), mask)
  logits = np.asarray(logits, np.float64)
  out = []
  for i, (p, n) in enumerate(zip(prompts, np.asarray(lengths))):
    start = width - len(rows[i]) + len(p) - 1  # position whose logits predict new token 0
    out.append(logits[i, start : start + n])  # [n, vocab]
  return out


def test_top_k_1_sampling_equals_greedy():
  model, params = _model(style="llama")
  kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=PAD)  # greedy: the same program as below
  greedy = decoding.generate(model, params, PROMPTS, **kw)
  sampled = decoding.generate(
    model, params, PROMPTS, method="sample", top_k=1, temperature=0.5, rng=jax.random.key(3), **kw
  )
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
  np.testing.assert_array_equal(sampled.logprobs, 0.0)  # one token left: probability 1


@pytest.mark.parametrize(
  "temperature,top_k,top_p", [(1.5, 5, 1.0), (1.0, 0, 0.6), (0.8, 8, 0.85)]
)
def test_first_token_follows_truncated_distribution(temperature, top_k, top_p):
  """Chi-square goodness of fit of 4000 first tokens against the numpy distribution."""
  stats = pytest.importorskip("scipy.stats")
  vocab, n = 16, 4000
  model, params = _model(vocab=vocab, seed=1)
  prompt = [3, 7, 11]
  logits = model.apply({"params": params}, jnp.asarray([prompt]))[0, -1]
  want = np.exp(_np_logprobs(logits, temperature, top_k, top_p))  # [vocab]
  out = decoding.generate(
    model,
    params,
    [prompt] * n,
    max_new_tokens=1,
    method="sample",
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    eos_id=None,
    pad_id=PAD,
    rng=jax.random.key(7),
  )
  counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=vocab)
  support = want > 0
  assert counts[~support].sum() == 0  # nothing outside the truncated support
  assert support.sum() >= 2
  _, p_value = stats.chisquare(counts[support], want[support] * n)
  assert p_value > 1e-3, (counts, np.round(want * n, 1))


@pytest.mark.parametrize("method", ["sample", "greedy"])
def test_logprobs_equal_full_forward(method):
  """Returned log-probs = log-softmax of (logits / T, truncated) at the chosen tokens."""
  model, params = _model(style="llama")
  t, k, p = (0.7, 8, 0.9) if method == "sample" else (1.0, 0, 1.0)
  out = decoding.generate(
    model,
    params,
    PROMPTS,
    max_new_tokens=10,
    min_new_tokens=3,
    method=method,
    temperature=t,
    top_k=k,
    top_p=p,
    eos_id=EOS,
    pad_id=PAD,
    rng=jax.random.key(0),
  )
  tokens, logprobs, lengths = (np.asarray(x) for x in (out.tokens, out.logprobs, out.lengths))
  for i, logits in enumerate(_full_logits(model, params, PROMPTS, tokens, lengths)):
    logits[:3, EOS] = -np.inf  # min_new_tokens suppression comes first
    ref = _np_logprobs(logits, t, k, p)  # [n, vocab]
    n = lengths[i]
    chosen = ref[np.arange(n), tokens[i, :n]]
    np.testing.assert_allclose(logprobs[i, :n], chosen, atol=2e-4, rtol=1e-4)
    assert np.isfinite(chosen).all()
    np.testing.assert_array_equal(logprobs[i, n:], 0.0)
    if method == "greedy":
      np.testing.assert_array_equal(tokens[i, :n], ref.argmax(-1))


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_cached_and_uncached_logits_match_every_step(style):
  """Prefill + one-token steps with the KV cache = re-running the whole sequence."""
  model, params = _model(style=style)
  ids, mask, _ = decoding.pad_prompts(PROMPTS, PAD, 64)
  ids, mask, steps = jnp.asarray(ids), jnp.asarray(mask), 8
  results = []
  for adapter in (decoding.CachedDecoder(model), decoding.UncachedDecoder(model)):
    step = jax.jit(adapter.step)
    logits, state = jax.jit(adapter.prefill, static_argnums=3)(params, ids, mask, steps)
    seen = [logits]
    for i in range(steps - 1):  # the same token sequence for both: a fixed pattern
      tokens = jnp.asarray([(7 * i + 3 * r) % 64 for r in range(len(PROMPTS))], jnp.int32)
      logits, state = step(params, state, tokens)
      seen.append(logits)
    results.append(np.stack(seen))  # [steps, b, vocab]
  np.testing.assert_allclose(results[0], results[1], atol=1e-4, rtol=1e-4)


def test_uncached_generate_equals_cached():
  model, params = _model(style="llama")
  kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=PAD)
  cached = decoding.generate(model, params, PROMPTS, **kw)
  uncached = decoding.generate(model, params, PROMPTS, use_cache=False, **kw)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_allclose(cached.logprobs, uncached.logprobs, atol=1e-5)
