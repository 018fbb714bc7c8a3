"""Prompt tuning (Lester et al. 2021): n learned virtual tokens before the input, model frozen.

Sequence layout: [n soft tokens | k hard-prompt tokens | the input]. The soft
tokens are rows of a learned matrix [n, embed] that replace the token
embeddings of n placeholder ids; the optional hard prompt is ordinary text,
tokenised once. The prefix has positions 0..n+k-1 and segment id 1; the input
keeps its own positions shifted by n+k. The model itself is untouched: its
`Embed` call is intercepted (`nn.intercept_methods`) to write the soft rows.

    prompt = SoftPrompt(num_tokens=8, hard_ids=tuple(tok.encode("Answer briefly.")))
    soft = prompt.init(base_params["embed"]["embedding"], init_ids)   # [8, embed]
    logits = prompt.apply(model, base_params, soft, ids, positions, segment_ids)  # [b, l, vocab]
    out = decoding.generate(prompt.decoder(model), {"base": base_params, "soft": soft}, ...)

Only the soft prompt is trained and saved (`save_soft_prompt`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmrl.config import ConfigError, check_enum
from llmrl.decoding.adapters import CachedDecoder
from llmrl.models.layers import Embed

INITS = ("vocab", "text")


def default_config() -> ml_collections.ConfigDict:
  """The optional `config.prompt_tuning` block of the SFT config (off by default)."""
  c = ml_collections.ConfigDict()
  c.num_tokens = 0       # n virtual tokens; 0 = off
  c.init = "vocab"       # "vocab": embeddings of n sampled vocabulary tokens; "text": of init_text
  c.init_text = ""       # text whose token embeddings start the soft prompt (cycled to n)
  c.hard_prompt = ""     # optional text placed after the soft prompt, before every input
  return c


def enabled(c: ml_collections.ConfigDict | None) -> bool:
  return c is not None and c.num_tokens > 0


def init_ids(c: ml_collections.ConfigDict, tok, rng: np.random.RandomState) -> np.ndarray:
  """The n token ids whose embeddings initialise the soft prompt."""
  check_enum("prompt_tuning.init", c.init, INITS)
  n = c.num_tokens
  if c.init == "text":
    ids = tok.encode(c.init_text) if c.init_text else []
    if not ids:
      raise ConfigError("config.prompt_tuning.init='text' needs a non-empty "
                        "config.prompt_tuning.init_text.")
    return np.resize(np.asarray(ids, np.int32), n)  # cycled / truncated to n
  specials = {getattr(tok, a, None) for a in ("pad_id", "bos_id", "eos_id", "end_id", "unk_id")}
  pool = np.asarray([i for i in range(tok.vocab_size) if i not in specials], np.int32)
  return rng.choice(pool, size=n, replace=len(pool) < n)


@dataclasses.dataclass(frozen=True)
class SoftPrompt:
  """n soft tokens (then the fixed hard-prompt ids) in front of every input."""
  num_tokens: int
  hard_ids: tuple[int, ...] = ()

  @property
  def prefix_len(self) -> int:
    return self.num_tokens + len(self.hard_ids)

  def init(self, embedding: jax.Array, ids: np.ndarray) -> jax.Array:
    """The soft prompt [n, embed] = rows `ids` of the (frozen) embedding table [vocab, embed]."""
    if len(ids) != self.num_tokens:
      raise ValueError(f"init ids: {len(ids)} ids for {self.num_tokens} soft tokens")
    return jnp.asarray(embedding)[jnp.asarray(ids)].astype(jnp.float32)

  def extend(self, ids, positions=None, segment_ids=None):
    """(ids, positions, segment_ids) [b, l] -> the same with the prefix in front [b, P + l]."""
    b, length = ids.shape
    p = self.prefix_len
    prefix = jnp.concatenate([jnp.zeros((self.num_tokens,), jnp.int32),
                              jnp.asarray(self.hard_ids, jnp.int32)])  # [P]
    ids = jnp.concatenate([jnp.broadcast_to(prefix, (b, p)), ids.astype(jnp.int32)], 1)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), positions + p], 1)
    if segment_ids is None:
      segment_ids = jnp.ones((b, length), jnp.int32)
    segment_ids = jnp.concatenate([jnp.ones((b, p), jnp.int32), segment_ids.astype(jnp.int32)], 1)
    return ids, positions, segment_ids

  def interceptor(self, soft: jax.Array):
    """Writes the soft rows over the first n token embeddings of each Embed lookup."""
    n = self.num_tokens

    def intercept(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      # (shorter lookups are not a prefixed input, e.g. init_cache's 1-token trace)
      if (isinstance(context.module, Embed) and context.method_name == "__call__"
          and out.shape[1] >= n):
        b = out.shape[0]
        rows = jnp.broadcast_to(soft.astype(out.dtype), (b, n, out.shape[-1]))  # [b, n, embed]
        out = jax.lax.dynamic_update_slice_in_dim(out, rows, 0, axis=1)
      return out

    return intercept

  def apply(self, model: nn.Module, base_params, soft, ids, positions=None, segment_ids=None,
            **kwargs):
    """The model's per-token outputs for the input positions only: [b, l, ...]."""
    ids, positions, segment_ids = self.extend(ids, positions, segment_ids)
    with nn.intercept_methods(self.interceptor(soft)):
      out = model.apply({"params": base_params}, ids, positions, segment_ids, **kwargs)
    return out[:, self.prefix_len:]

  def decoder(self, model) -> "SoftPromptDecoder":
    """A DecodeAdapter for llmrl.decoding.generate (params = {"base": ..., "soft": ...})."""
    return SoftPromptDecoder(CachedDecoder(model), self)


@dataclasses.dataclass(frozen=True)
class SoftPromptDecoder:
  """Cached decoding with the soft (+ hard) prefix prefilled in front of each prompt."""
  inner: CachedDecoder
  prompt: SoftPrompt

  @property
  def vocab_size(self) -> int:
    return self.inner.vocab_size

  def check_lengths(self, prompt_len: int, max_new_tokens: int) -> None:
    self.inner.check_lengths(prompt_len + self.prompt.prefix_len, max_new_tokens)

  def _extended(self, ids, mask):
    # [prefix | left padding | prompt]: the prompt's positions continue the prefix's
    # (prompt_positions counts real tokens), exactly as in training.
    ext_ids, _, _ = self.prompt.extend(ids)
    b = ids.shape[0]
    ext_mask = jnp.concatenate([jnp.ones((b, self.prompt.prefix_len), mask.dtype), mask], 1)
    return ext_ids, ext_mask

  def prefill(self, params, ids, mask, max_new_tokens: int):
    ext_ids, ext_mask = self._extended(ids, mask)
    with nn.intercept_methods(self.prompt.interceptor(params["soft"])):
      return self.inner.prefill(params["base"], ext_ids, ext_mask, max_new_tokens)

  def beam_prefill(self, params, ids, mask, max_new_tokens: int, num_beams: int):
    ext_ids, ext_mask = self._extended(ids, mask)
    with nn.intercept_methods(self.prompt.interceptor(params["soft"])):
      return self.inner.beam_prefill(params["base"], ext_ids, ext_mask, max_new_tokens,
                                     num_beams)

  def step(self, params, state, tokens):
    return self.inner.step(params["base"], state, tokens)

  def __getattr__(self, name):
    # Optional state-only hooks of the inner decoder (select_beams, grow, ...): the prefix
    # sits in the cache like any prompt, so they apply unchanged.
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(object.__getattribute__(self, "inner"), name)


SOFT_PROMPT_FILE = "soft_prompt.safetensors"


def save_soft_prompt(directory: str, prompt: SoftPrompt, soft: Any) -> str:
  """Writes only the soft prompt [n, embed] and the hard-prompt ids."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, SOFT_PROMPT_FILE)
  save_file({"soft": np.asarray(jax.device_get(soft), np.float32),
             "hard_ids": np.asarray(prompt.hard_ids, np.int32).reshape(-1)}, path)
  return path


def load_soft_prompt(directory: str) -> tuple[SoftPrompt, jax.Array]:
  from safetensors.numpy import load_file
  path = os.path.join(directory, SOFT_PROMPT_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {directory} holds no soft prompt.")
  t = load_file(path)
  return (SoftPrompt(int(t["soft"].shape[0]), tuple(int(i) for i in t["hard_ids"])),
          jnp.asarray(t["soft"]))
