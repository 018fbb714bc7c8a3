"""Decoding: greedy, sampling (temperature / top-k / top-p) and beam search.

    from llmrl import decoding
    out = decoding.generate(model, params, prompts, max_new_tokens=64, method="beam",
                            num_beams=4, eos_id=tok.eos_id, pad_id=tok.pad_id)
    out.tokens, out.logprobs, out.lengths, out.scores

One mechanism for every experiment (eval samples, chat, RLHF rollouts): the
prompt is prefilled into a KV cache and the tokens are produced by one
`lax.while_loop`, all inside one `jax.jit` program. Models are reached
through a `DecodeAdapter` (adapters.py); GPT and T5 (seq2seq.py, prompt = encoder
input) have one, and another model plugs in without touching the loops. Beam search reproduces transformers' results.
"""

from llmrl.decoding.adapters import CachedDecoder, DecodeAdapter, UncachedDecoder, as_adapter
from llmrl.decoding.api import METHODS, decode, generate, pad_prompts
from llmrl.decoding.loops import GenerateOutput, Knobs, Settings
from llmrl.decoding.seq2seq import Seq2SeqDecoder

__all__ = [
  "METHODS",
  "CachedDecoder",
  "DecodeAdapter",
  "GenerateOutput",
  "Knobs",
  "Seq2SeqDecoder",
  "Settings",
  "UncachedDecoder",
  "as_adapter",
  "decode",
  "generate",
  "pad_prompts",
]
