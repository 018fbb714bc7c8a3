"""What the decoding loops need from a model: a prefill and a one-token step.

The loops in `llmrl.decoding` never call a model directly; they talk to a
`DecodeAdapter`, so any architecture plugs in by writing one:

    logits, state = adapter.prefill(params, ids, mask, max_new_tokens)  # ids/mask [b, p]
    logits, state = adapter.step(params, state, tokens)                 # tokens [b]

`logits` are float32 [b, vocab] for the next token; `state` is any pytree
whose array leaves have the batch on axis 0 (scalars are shared), e.g. a KV
cache. The loops move its rows themselves (`gather_rows` repeats prompts for
beams and num_return_sequences, `select_beams` follows beam parents); an
adapter may define `select_beams(state, parents)` to do the latter faster,
and `beam_prefill(params, ids, mask, max_new_tokens, num_beams)` to lay out
its own beam state (rows b * num_beams; `CachedDecoder` uses it for a KV
cache that is never reordered: only per-slot parent tables move). With
`beam_prompt_slots(state, max_new_tokens)` and `resize_beam_cache(state,
length)` as well, beam search grows that cache in up to 4 segments (one
`while_loop` each), so early steps attend over a shorter cache.

Decoder-only (here): the left-padded prompt is prefilled into a KV cache of
p + max_new_tokens slots; positions restart at 0 at each row's first real
token and padding has segment id 0, so it is never attended.
Encoder-decoder (seq2seq.py, for llmrl's T5): `prefill` encodes the prompts
(encoder input, mask = encoder padding), keeps the encoder outputs and mask
in `state` and runs the decoder on its start token; `step` runs the decoder
with cross-attention. Encoder outputs are batch-first state leaves, so they
follow the beams with the cache, and nothing in the loops changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from llmrl.models.gpt import GPT, init_cache, unscan_params
from llmrl.models.t5 import T5
from llmrl.decoding.seq2seq import Seq2SeqDecoder


@runtime_checkable
class DecodeAdapter(Protocol):
  """A model as seen by the decoding loops (hashable: it is a static jit argument)."""

  vocab_size: int

  def check_lengths(self, prompt_len: int, max_new_tokens: int) -> None:
    """Raises ValueError (naming the argument) if the lengths do not fit the model."""

  def prefill(self, params, ids, mask, max_new_tokens: int) -> tuple[jax.Array, Any]:
    """ids/mask [b, p] (left-padded; mask 1 = real) -> (next-token logits [b, vocab], state)."""

  def step(self, params, state, tokens) -> tuple[jax.Array, Any]:
    """tokens [b] (the last chosen tokens) -> (next-token logits [b, vocab], state)."""


_CHUNK = 16  # cache slots per step of the in-place beam reordering loop


def _new_slots(max_new_tokens: int) -> int:
  """Cache slots `prefill` allots to generated tokens (whole reordering chunks)."""
  return -(-max_new_tokens // _CHUNK) * _CHUNK


def gather_rows(tree, rows):
  """tree leaves [b, ...] -> [len(rows), ...] (rows in range); scalar leaves are kept."""
  take = lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, rows, axis=0, mode="clip")  # noqa: E731
  return jax.tree.map(take, tree)


def _select(x, parents):
  """x [b * k, ...] with row i * k + j replaced by row i * k + parents[i, j] [b, k].

  A chain of k selects instead of a gather: XLA's CPU gather is several
  times slower than a copy on a large KV cache.
  """
  b, k = parents.shape
  xs = x.reshape((b, k) + x.shape[1:])  # [b, k, ...]
  p = parents.reshape((b, k) + (1,) * (x.ndim - 1))
  out = xs[:, :1]
  for j in range(1, k):
    out = jnp.where(p == j, xs[:, j : j + 1], out)  # [b, k, ...]
  return out.reshape(x.shape)


def select_beams(tree, parents):
  """Beam reordering of every leaf [b * k, ...] (scalars kept); parents [b, k] in [0, k)."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else _select(x, parents), tree)


def _has_leaf(tree, name: str) -> bool:
  """Whether a (nested dict) pytree has a leaf called `name` (static: tree structure)."""
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return any(str(getattr(path[-1], "key", "")) == name for path, _ in paths)


def prompt_positions(mask):
  """mask [b, p] (1 = real, left padding) -> positions [b, p], 0 at the first real token."""
  return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)


def _last_logits(module: GPT, ids, positions, segment_ids):
  """Logits of the last position only [b, vocab] (the whole prompt is still cached)."""
  hidden = module.hidden_states(ids, positions, segment_ids)  # [b, p, embed]
  return module.logits(hidden[:, -1:])[:, 0]  # [b, vocab]


@dataclasses.dataclass(frozen=True)
class CachedDecoder:
  """llmrl's decoder-only `GPT` with a preallocated KV cache (the normal path)."""

  model: GPT

  @property
  def vocab_size(self) -> int:
    return self.model.config.vocab_size

  @property
  def decode_config(self):
    # Head-major cache: attention reads it without a per-step transpose of the whole cache.
    # Unscanned layers: the loops expect every cache leaf batch-first (a scanned cache
    # is stacked [num_layers, b, ...]); scanned params are unstacked by `_params`.
    return self.model.config.replace(decode=True, cache_layout="head_major", scan_layers=False)

  def _params(self, params):
    """params of `model` (scan_layers: stacked params["layers"]) -> the decode model's tree."""
    return unscan_params(params) if self.model.config.scan_layers else params

  @property
  def decode_model(self) -> GPT:
    return GPT(self.decode_config)

  def check_lengths(self, prompt_len: int, max_new_tokens: int) -> None:
    max_len = self.model.config.max_len
    if prompt_len + max_new_tokens > max_len:
      raise ValueError(
        f"prompts: the longest prompt has {prompt_len} tokens and max_new_tokens={max_new_tokens}; "
        f"together {prompt_len + max_new_tokens} exceed the model's max_len={max_len}. "
        "Shorten the prompt or lower max_new_tokens."
      )

  def prefill(self, params, ids, mask, max_new_tokens: int):
    b, p = ids.shape
    # Each step attends over the whole cache, so it has only p + max_new_tokens
    # slots (rounded up to whole beam-reordering chunks; extra slots are never seen).
    new_slots = _new_slots(max_new_tokens)
    cache = init_cache(self.decode_config.replace(max_len=p + new_slots), b)
    positions = prompt_positions(mask)  # [b, p]
    logits, variables = self.decode_model.apply(
      {"params": self._params(params), "cache": cache},
      ids,
      positions,
      mask.astype(jnp.int32),  # segment ids: 1 = prompt, 0 = padding
      method=_last_logits,
      mutable=["cache"],
    )
    state = {
      "cache": variables["cache"],
      "position": positions[:, -1] + 1,  # [b] the next token's position
      "prompt_len": jnp.asarray(p, jnp.int32),  # [] cache slots holding the prompt
    }
    return logits.astype(jnp.float32), state

  def beam_prefill(self, params, ids, mask, max_new_tokens: int, num_beams: int):
    """Prefill for beam search: (logits [b * k, vocab], state) with a "beam" layout cache.

    The prompts are prefilled once; each layer's values become [b, kvh,
    len * k, d] and keys [b, kvh, d, len * k] (every beam a copy of the
    prompt's) plus a cached_parent table
    [b * k, len] of zeros, so steps never move the cache (`select_beams` then
    reorders only the tables).
    """
    logits, state = self.prefill(params, ids, mask, max_new_tokens)
    k = num_beams
    rows = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731 - [b, ...] -> [b * k, ...]

    def convert(node):
      if "cached_key" not in node:
        return {n: convert(x) if isinstance(x, dict) else x for n, x in node.items()}

      def beam_kv(x):  # [b, kvh, len, d] -> [b, kvh, len * k, d]: slot s of beam j at s * k + j
        return jnp.repeat(x, k, axis=2)

      return dict(
        node,
        cached_key=jnp.swapaxes(beam_kv(node["cached_key"]), 2, 3),  # [b, kvh, d, len * k]
        cached_value=beam_kv(node["cached_value"]),
        cached_segment=rows(node["cached_segment"]),  # [b * k, len]
        cached_parent=jnp.zeros(rows(node["cached_segment"]).shape, jnp.int32),  # [b * k, len]
      )

    state = dict(state, cache=convert(dict(state["cache"])), position=rows(state["position"]))
    return rows(logits), state

  def beam_prompt_slots(self, state, max_new_tokens: int) -> int:
    """Cache slots holding the prompt (a soft prompt's prefix included) in a state
    fresh from `beam_prefill` (static: read off the cache's shape)."""
    parent = next(x for path, x in jax.tree_util.tree_leaves_with_path(state["cache"])
                  if str(getattr(path[-1], "key", "")) == "cached_parent")
    return parent.shape[-1] - _new_slots(max_new_tokens)

  def resize_beam_cache(self, state, length: int):
    """The beam-layout state with `length` cache slots: cut, or padded with empty
    (segment 0, never visible) slots. Beam search grows the cache as it goes,
    since every step's attention reads all of it."""

    def to(x, axis, per_slot):
      n, have = length * per_slot, x.shape[axis]
      if n <= have:
        return jax.lax.slice_in_dim(x, 0, n, axis=axis % x.ndim)
      pad = [(0, 0)] * x.ndim
      pad[axis % x.ndim] = (0, n - have)
      return jnp.pad(x, pad)

    def fix(node):
      if "cached_parent" not in node:
        return {n: fix(x) if isinstance(x, dict) else x for n, x in node.items()}
      parent = node["cached_parent"]  # [(layers,) rows, len]
      if parent.shape[-1] == length:
        return node
      k = node["cached_value"].shape[-2] // parent.shape[-1]  # beams
      return dict(
        node,
        cached_key=to(node["cached_key"], -1, k),  # [.., d, len * k]
        cached_value=to(node["cached_value"], -2, k),  # [.., len * k, d]
        cached_segment=to(node["cached_segment"], -1, 1),
        cached_parent=to(parent, -1, 1),
      )

    return dict(state, cache=fix(dict(state["cache"])))

  def step(self, params, state, tokens):
    b = tokens.shape[0]
    model = self.decode_model
    if _has_leaf(state["cache"], "cached_parent"):  # beam search's cache (beam_prefill)
      model = GPT(self.decode_config.replace(cache_layout="beam"))
    logits, variables = model.apply(
      {"params": self._params(params), "cache": state["cache"]},
      tokens[:, None],  # [b, 1]
      state["position"][:, None],  # [b, 1]
      jnp.ones((b, 1), jnp.int32),
      mutable=["cache"],
    )  # [b, 1, vocab]
    state = dict(state, cache=variables["cache"], position=state["position"] + 1)
    return logits[:, 0].astype(jnp.float32), state

  def select_beams(self, state, parents):
    """Beam reordering that moves only the generated keys/values.

    Beams of one prompt share its cache slots, positions and segment ids, so
    only cached_key/cached_value slots in [prompt_len, written) differ; they
    are reordered chunk by chunk, in place: about half the bytes of
    reordering the whole cache, which dominates beam search on a CPU.
    """
    leaves, tree = jax.tree_util.tree_flatten_with_path(state["cache"])
    names = [str(getattr(path[-1], "key", "")) for path, _ in leaves]
    if "cached_parent" in names:  # beam layout (beam_prefill): only the parent tables move
      values = [
        _select(x, parents) if n == "cached_parent" else x for n, (_, x) in zip(names, leaves)
      ]
      return dict(state, cache=jax.tree_util.tree_unflatten(tree, values))
    kv = [i for i, n in enumerate(names) if n in ("cached_key", "cached_value")]
    written = next(x for n, (_, x) in zip(names, leaves) if n == "cache_index")
    start = state["prompt_len"]

    def chunk(j, arrays):  # arrays: head-major [b * k, kvh, cache_len, d]
      at = start + j * _CHUNK
      return [
        jax.lax.dynamic_update_slice_in_dim(
          x, _select(jax.lax.dynamic_slice_in_dim(x, at, _CHUNK, 2), parents), at, 2
        )
        for x in arrays
      ]

    n_chunks = (written - start + _CHUNK - 1) // _CHUNK
    moved = jax.lax.fori_loop(0, n_chunks, chunk, [leaves[i][1] for i in kv])
    values = [x for _, x in leaves]
    for i, x in zip(kv, moved):
      values[i] = x
    return dict(state, cache=jax.tree_util.tree_unflatten(tree, values))


@dataclasses.dataclass(frozen=True)
class UncachedDecoder:
  """Reference decoder without a cache: every step re-runs the whole sequence.

  O(length^2) per step; used to check the cache and to measure what it saves.
  """

  model: GPT

  @property
  def vocab_size(self) -> int:
    return self.model.config.vocab_size

  def check_lengths(self, prompt_len: int, max_new_tokens: int) -> None:
    CachedDecoder(self.model).check_lengths(prompt_len, max_new_tokens)

  def _logits_at(self, params, state):
    model = GPT(self.model.config.replace(decode=False))
    logits = model.apply(
      {"params": params}, state["ids"], prompt_positions(state["mask"]), state["mask"]
    )  # [b, p + max_new, vocab]
    b = logits.shape[0]
    return logits[jnp.arange(b), state["index"] - 1].astype(jnp.float32)  # [b, vocab]

  def prefill(self, params, ids, mask, max_new_tokens: int):
    b, p = ids.shape
    pad = ((0, 0), (0, max_new_tokens))
    state = {
      "ids": jnp.pad(ids, pad),  # [b, p + max_new]
      "mask": jnp.pad(mask.astype(jnp.int32), pad),  # 0 = padding or not yet generated
      "index": jnp.full((b,), p, jnp.int32),  # where the next token goes
    }
    return self._logits_at(params, state), state

  def step(self, params, state, tokens):
    b = tokens.shape[0]
    rows, index = jnp.arange(b), state["index"]
    state = {
      "ids": state["ids"].at[rows, index].set(tokens),
      "mask": state["mask"].at[rows, index].set(1),
      "index": index + 1,
    }
    return self._logits_at(params, state), state


def as_adapter(model, use_cache: bool = True) -> DecodeAdapter:
  """A DecodeAdapter for `model` (a GPT, a T5, or already an adapter)."""
  if isinstance(model, GPT):
    return CachedDecoder(model) if use_cache else UncachedDecoder(model)
  if isinstance(model, T5):
    if not use_cache:
      raise ValueError("use_cache=False: T5 decoding has only the cached path; drop the flag")
    return Seq2SeqDecoder(model)
  if isinstance(model, DecodeAdapter):
    return model
  raise ValueError(
    f"model: {type(model).__name__} is not supported by llmrl.decoding; pass an llmrl GPT or T5 "
    "or wrap the model in a DecodeAdapter (see llmrl/decoding/adapters.py)"
  )
