"""Greedy and sampling decoding: prefill once, then one `lax.while_loop` over tokens.

Each loop iteration feeds the last chosen tokens through the adapter (one
cached step), picks the next tokens and writes them into preallocated
[rows, max_new_tokens] buffers. Rows that emitted EOS keep running (the batch
has a fixed shape) but write pad_id with log-prob 0; the loop stops as soon
as every row is done or max_new_tokens are written.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from llmrl.decoding import processing
from llmrl.decoding.adapters import gather_rows


class Settings(NamedTuple):
  """Compile-time decoding settings (hashable; a static jit argument)."""

  method: str  # "greedy" | "sample" | "beam"
  max_new_tokens: int
  top_k: int  # 0 = off
  use_top_p: bool  # top_p < 1
  num_beams: int
  num_return_sequences: int
  eos_ids: tuple  # token ids that end a row (may be empty)
  pad_id: int


class Knobs(NamedTuple):
  """Run-time decoding values (traced scalars: changing them does not recompile)."""

  min_new_tokens: jax.Array  # int32
  temperature: jax.Array  # float32
  top_p: jax.Array  # float32
  length_penalty: jax.Array  # float32
  stop_when_full: jax.Array  # bool: early_stopping=True (a prompt's beam pool full = done)
  optimistic: jax.Array  # bool: early_stopping="never" (bound running beams at max length)


class GenerateOutput(NamedTuple):
  """What `llmrl.decoding.generate` returns (rows = batch * num_return_sequences)."""

  tokens: jax.Array  # int32 [rows, max_new_tokens]: new tokens only, pad_id after EOS
  logprobs: jax.Array  # float32 [rows, max_new_tokens]: log-prob of each token, 0 at pads
  lengths: jax.Array  # int32 [rows]: tokens generated, EOS included
  scores: Optional[jax.Array] = None  # float32 [rows]: beam scores (length-penalised)


class _Carry(NamedTuple):
  t: jax.Array  # [] index of the next token to write
  state: Any  # adapter state (KV cache, positions)
  last: jax.Array  # [rows] the tokens written at t - 1
  tokens: jax.Array  # [rows, max_new]
  logprobs: jax.Array  # [rows, max_new]
  lengths: jax.Array  # [rows]
  done: jax.Array  # [rows] bool: EOS emitted


def _pick(logits, t, rng, s: Settings, k: Knobs):
  """Next tokens [rows] and their log-probs [rows] from logits [rows, vocab] at step t."""
  logits = processing.suppress_eos(logits, s.eos_ids, t < k.min_new_tokens)
  if s.method == "sample":
    logprobs = processing.sampling_logprobs(
      logits, temperature=k.temperature, top_k=s.top_k, top_p=k.top_p, use_top_p=s.use_top_p
    )
    return processing.choose(logprobs, jax.random.fold_in(rng, t))
  return processing.choose(jax.nn.log_softmax(logits, axis=-1), None)


def _write(c: _Carry, tokens, logprobs, s: Settings) -> _Carry:
  """Records step c.t's tokens (pad_id / 0 for finished rows) and advances t."""
  tokens = jnp.where(c.done, s.pad_id, tokens)
  logprobs = jnp.where(c.done, 0.0, logprobs)
  at = (0, c.t)
  return _Carry(
    t=c.t + 1,
    state=c.state,
    last=tokens,
    tokens=jax.lax.dynamic_update_slice(c.tokens, tokens[:, None], at),
    logprobs=jax.lax.dynamic_update_slice(c.logprobs, logprobs[:, None], at),
    lengths=c.lengths + (~c.done).astype(jnp.int32),
    done=c.done | jnp.isin(tokens, jnp.asarray(s.eos_ids, jnp.int32)),
  )


def greedy_or_sample(adapter, params, ids, mask, rng, s: Settings, k: Knobs) -> GenerateOutput:
  """Greedy (argmax) or sampled decoding of left-padded prompts ids/mask [b, p]."""
  logits, state = adapter.prefill(params, ids, mask, s.max_new_tokens)  # [b, vocab]
  n = s.num_return_sequences
  if n > 1:  # each prompt n times, in order: row i * n + j
    rows = jnp.repeat(jnp.arange(ids.shape[0]), n)
    logits, state = logits[rows], gather_rows(state, rows)
  b, t_max = logits.shape[0], s.max_new_tokens
  c = _Carry(
    t=jnp.zeros((), jnp.int32),
    state=state,
    last=jnp.zeros((b,), jnp.int32),
    tokens=jnp.full((b, t_max), s.pad_id, jnp.int32),
    logprobs=jnp.zeros((b, t_max), jnp.float32),
    lengths=jnp.zeros((b,), jnp.int32),
    done=jnp.zeros((b,), bool),
  )
  c = _write(c, *_pick(logits, c.t, rng, s, k), s)

  def cond(c: _Carry):
    return (c.t < t_max) & ~jnp.all(c.done)

  def body(c: _Carry):
    logits, state = adapter.step(params, c.state, c.last)
    c = c._replace(state=state)
    return _write(c, *_pick(logits, c.t, rng, s, k), s)

  c = jax.lax.while_loop(cond, body, c)
  return GenerateOutput(tokens=c.tokens, logprobs=c.logprobs, lengths=c.lengths)
