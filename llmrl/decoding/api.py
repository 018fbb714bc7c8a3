"""`generate`: validate, left-pad the prompts, and run one jitted decoding program.

    out = generate(model, params, [[2, 17, 9], [2, 5]], max_new_tokens=32,
                   method="sample", temperature=0.7, top_p=0.9, eos_id=1, pad_id=0,
                   rng=jax.random.key(0))
    out.tokens    # int32 [2, 32]: new tokens, pad_id after EOS
    out.logprobs  # float32 [2, 32]: log-prob of each token under the sampling distribution

Everything after the host-side checks is one `jax.jit` program (prefill +
`lax.while_loop`), compiled once per (model, batch, prompt length, static
settings); temperature, top_p, length_penalty and min_new_tokens are traced
values, so changing them does not recompile. Inside your own jitted code
(e.g. RLHF rollouts) call `decode` with arrays instead.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from llmrl.decoding.adapters import DecodeAdapter, as_adapter
from llmrl.decoding.beam import beam_search
from llmrl.decoding.loops import GenerateOutput, Knobs, Settings, greedy_or_sample

METHODS = ("greedy", "sample", "beam")
EarlyStopping = Union[bool, str]


def decode(adapter: DecodeAdapter, params, ids, mask, rng, settings: Settings, knobs: Knobs):
  """The decoding program (traceable): ids/mask [b, p] left-padded -> GenerateOutput."""
  if settings.method == "beam":
    return beam_search(adapter, params, ids, mask, settings, knobs)
  return greedy_or_sample(adapter, params, ids, mask, rng, settings, knobs)


_decode_jit = jax.jit(decode, static_argnums=(0, 5))


def _int(name: str, value, low: int, high: Optional[int] = None) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name}={value!r} must be an int")
  if value < low or (high is not None and value > high):
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name}={value} must be {bound}")
  return int(value)


def _eos_tuple(eos_id, vocab: int) -> tuple:
  if eos_id is None:
    return ()
  ids = (eos_id,) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
  return tuple(_int("eos_id", i, 0, vocab - 1) for i in ids)


def pad_prompts(prompts, pad_id: int, vocab: int, multiple: int = 1):
  """Prompts -> left-padded (ids [b, p] int32, mask [b, p] int32, longest real length).

  A list of token-id lists may have different lengths. A 2-D array is read
  as already left-padded: leading pad_id entries of a row are padding.
  `multiple` rounds p up (fewer recompilations when prompt lengths vary).
  """
  if isinstance(prompts, (np.ndarray, jax.Array)):
    arr = np.asarray(prompts)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(
        f"prompts: a prompt array must be 2-D int [batch, length], got {arr.dtype}{list(arr.shape)}"
      )
    real = np.cumsum(arr != pad_id, axis=1) > 0  # False on leading padding
    rows = [row[keep].tolist() for row, keep in zip(arr, real)]
  else:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
      raise ValueError(
        "prompts must be a list of token-id lists or a 2-D int array (tokenize text first)"
      )
    rows = [list(r) for r in prompts]
  if not rows:
    raise ValueError("prompts is empty: give at least one prompt")
  for i, row in enumerate(rows):
    if not row:
      raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token (e.g. bos)")
    bad = [t for t in row if not isinstance(t, (int, np.integer)) or not 0 <= t < vocab]
    if bad:
      raise ValueError(f"prompts[{i}] has token ids outside [0, {vocab}) (vocab_size): {bad[:5]}")
  longest = max(len(r) for r in rows)
  p = -(-longest // multiple) * multiple
  ids = np.full((len(rows), p), pad_id, np.int32)
  mask = np.zeros((len(rows), p), np.int32)
  for i, row in enumerate(rows):
    ids[i, p - len(row) :] = row
    mask[i, p - len(row) :] = 1
  return ids, mask, longest


def generate(
  model,
  params,
  prompts,
  *,
  max_new_tokens: int,
  min_new_tokens: int = 0,
  method: str = "greedy",
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  num_beams: int = 1,
  length_penalty: float = 1.0,
  early_stopping: EarlyStopping = False,
  num_return_sequences: int = 1,
  eos_id: Union[int, Sequence[int], None],
  pad_id: int,
  rng: Optional[jax.Array] = None,
  use_cache: bool = True,
  pad_to_multiple: int = 1,
) -> GenerateOutput:
  """Continue `prompts` with `model` (an llmrl GPT or a DecodeAdapter).

  method "greedy" (argmax), "sample" (temperature, then top_k, then top_p
  truncation; needs `rng`) or "beam" (transformers' beam search: num_beams,
  length_penalty, early_stopping True/False/"never"). Rows of the result are
  prompt i's sequences i * num_return_sequences + j. `logprobs` are under the
  distribution each token was drawn from (sampling: scaled and truncated;
  greedy: the model's, after min_new_tokens EOS suppression; beam: the
  per-token terms of the beam score). eos_id may be a list (any ends a row)
  or None. use_cache=False re-runs the whole sequence each step (reference).
  Encoder-decoder models plug in through a DecodeAdapter (prompts = encoder input).
  """
  adapter = as_adapter(model, use_cache)
  vocab = adapter.vocab_size
  if method not in METHODS:
    raise ValueError(f"method={method!r} is not one of {METHODS}")
  max_new_tokens = _int("max_new_tokens", max_new_tokens, 1)
  min_new_tokens = _int("min_new_tokens", min_new_tokens, 0, max_new_tokens)
  top_k = min(_int("top_k", top_k, 0), vocab)
  num_beams = _int("num_beams", num_beams, 1)
  num_return_sequences = _int("num_return_sequences", num_return_sequences, 1)
  pad_id = _int("pad_id", pad_id, 0, vocab - 1)
  pad_to_multiple = _int("pad_to_multiple", pad_to_multiple, 1)
  eos_ids = _eos_tuple(eos_id, vocab)
  if not 0.0 < float(top_p) <= 1.0 or math.isnan(top_p):
    raise ValueError(f"top_p={top_p} must be in (0, 1]")
  if method == "sample":
    if not float(temperature) > 0.0 or not math.isfinite(temperature):
      raise ValueError(
        f"temperature={temperature} must be > 0 for method='sample' (use method='greedy' for argmax)"
      )
    if rng is None:
      raise ValueError("rng is required for method='sample' (e.g. rng=jax.random.key(0))")
  if method != "beam" and num_beams != 1:
    raise ValueError(f"num_beams={num_beams} needs method='beam'")
  if method == "greedy" and num_return_sequences != 1:
    raise ValueError(
      f"num_return_sequences={num_return_sequences} needs method='sample' or 'beam' (greedy is deterministic)"
    )
  if method == "beam" and num_return_sequences > num_beams:
    raise ValueError(
      f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}"
    )
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping={early_stopping!r} must be True, False or 'never'")
  if not math.isfinite(length_penalty):
    raise ValueError(f"length_penalty={length_penalty} must be finite")

  ids, mask, longest = pad_prompts(prompts, pad_id, vocab)
  adapter.check_lengths(longest, max_new_tokens)
  if pad_to_multiple > 1:  # round the padded length up, as far as the model allows
    ids, mask, _ = pad_prompts(ids, pad_id, vocab, pad_to_multiple)
    try:
      adapter.check_lengths(ids.shape[1], max_new_tokens)
    except ValueError:
      ids, mask, _ = pad_prompts(ids, pad_id, vocab)
  settings = Settings(
    method=method,
    max_new_tokens=max_new_tokens,
    top_k=top_k if method == "sample" else 0,
    use_top_p=method == "sample" and top_p < 1.0,
    num_beams=num_beams if method == "beam" else 1,
    # Beam search always returns every beam (sliced below), so one program serves any count.
    num_return_sequences=num_beams if method == "beam" else num_return_sequences,
    eos_ids=eos_ids,
    pad_id=pad_id,
  )
  knobs = Knobs(
    min_new_tokens=jnp.asarray(min_new_tokens, jnp.int32),
    temperature=jnp.asarray(temperature, jnp.float32),
    top_p=jnp.asarray(top_p, jnp.float32),
    length_penalty=jnp.asarray(length_penalty, jnp.float32),
    stop_when_full=jnp.asarray(early_stopping is True),
    optimistic=jnp.asarray(early_stopping == "never"),
  )
  rng = jax.random.key(0) if rng is None else rng
  out = _decode_jit(adapter, params, jnp.asarray(ids), jnp.asarray(mask), rng, settings, knobs)
  if method == "beam" and num_return_sequences < num_beams:
    keep = (np.arange(len(ids))[:, None] * num_beams + np.arange(num_return_sequences)).reshape(-1)
    out = jax.tree.map(lambda x: x[keep], out)
  return out
