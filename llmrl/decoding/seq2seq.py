"""Encoder-decoder models (T5) as a DecodeAdapter: the prompt is the encoder input.

`prefill` encodes the left-padded prompts once, keeps the encoder output and
its mask in the state, and runs the decoder on its start token;
`step` runs one decoder token with a self-attention KV cache and
cross-attention over the kept encoder output. Every state leaf has the
batch on axis 0 (the cache index is a shared scalar), so beams and
num_return_sequences move the encoder output with the cache and the loops
need nothing special. T5 has relative positions, so left padding changes
nothing but the (masked) padded keys.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from llmrl.models.t5 import T5, init_cache


@dataclasses.dataclass(frozen=True)
class Seq2SeqDecoder:
  """llmrl's `T5` with a decoder KV cache of max_new_tokens + 1 slots (not cfg.max_len)."""

  model: T5
  decoder_start_id: int = 0  # T5 starts decoding from the pad id

  @property
  def vocab_size(self) -> int:
    return self.model.config.vocab_size

  @property
  def decode_model(self) -> T5:
    return T5(self.model.config.replace(decode=True))

  def check_lengths(self, prompt_len: int, max_new_tokens: int) -> None:
    """No limit: relative positions, and the cache is sized to max_new_tokens here."""
    del prompt_len, max_new_tokens

  def _decode(self, params, state, tokens):
    """tokens [b] -> (logits [b, vocab] float32, state with the cache advanced)."""
    logits, variables = self.decode_model.apply(
      {"params": params, "cache": state["cache"]},
      state["encoded"],
      tokens[:, None],  # [b, 1]
      encoder_segment_ids=state["encoder_mask"],
      method=T5.decode,
      mutable=["cache"],
    )  # [b, 1, vocab]
    return logits[:, 0].astype(jnp.float32), dict(state, cache=variables["cache"])

  def prefill(self, params, ids, mask, max_new_tokens: int):
    b = ids.shape[0]
    mask = mask.astype(jnp.int32)  # [b, p] encoder segment ids: 1 = real, 0 = padding
    encoded = self.decode_model.apply(
      {"params": params}, ids, mask, method=T5.encode
    )  # [b, p, embed]
    state = {
      "cache": init_cache(self.model.config, b, max_new_tokens + 1),
      "encoded": encoded,
      "encoder_mask": mask,
    }
    start = jnp.full((b,), self.decoder_start_id, jnp.int32)
    return self._decode(params, state, start)

  def step(self, params, state, tokens):
    return self._decode(params, state, tokens)

