"""Text in, text out: completing prompts and holding a chat, on top of `generate`.

    done = complete(model, params, tok, ["Alice lives in"], max_new_tokens=32)
    chat = ChatSession(model, params, tok, max_new_tokens=64)
    print(chat.reply("Where does Alice live?"))

Chats are rendered with llmrl.data.chat (role markers <|system|> <|user|>
<|assistant|> <|end|>); a reply ends at <|end|> (or </s>). When the history
no longer fits the model's context, the oldest exchanges are dropped.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np

from llmrl.decoding.api import generate

PAD_MULTIPLE = 16  # prompts are padded to a multiple of this: fewer recompilations


class Completion(NamedTuple):
  prompt: str
  text: str  # the decoded new tokens (EOS / end markers dropped)
  tokens: list  # new token ids, EOS included
  logprob: float  # sum of the tokens' log-probs
  score: Optional[float]  # beam score (beam search only)


def encode_prompt(tok, text: str, add_bos: bool = True) -> list:
  """Token ids of a prompt, with bos first when the tokenizer has one (as in pretraining)."""
  ids = list(tok.encode(text))
  return ([tok.bos_id] if add_bos and tok.bos_id is not None else []) + ids


def _decode_new(tok, prompt_ids, new_ids) -> str:
  """Text of new_ids as it continues the prompt (keeps a leading space sentencepiece would drop)."""
  before = tok.decode(prompt_ids)
  full = tok.decode(list(prompt_ids) + list(new_ids))
  return full[len(before) :] if full.startswith(before) else tok.decode(new_ids)


def _results(prompts, prompt_ids, out, tok, eos_ids) -> list:
  n = len(out.tokens) // len(prompts)
  tokens, logprobs = np.asarray(out.tokens), np.asarray(out.logprobs)
  lengths = np.asarray(out.lengths)
  scores = None if out.scores is None else np.asarray(out.scores)
  results = []
  for row in range(len(tokens)):
    ids = tokens[row, : lengths[row]].tolist()
    text_ids = [i for i in ids if i not in eos_ids]
    results.append(
      Completion(
        prompt=prompts[row // n],
        text=_decode_new(tok, prompt_ids[row // n], text_ids),
        tokens=ids,
        logprob=float(logprobs[row].sum()),
        score=None if scores is None else float(scores[row]),
      )
    )
  return results


def _eos_ids(tok, *extra) -> tuple:
  return tuple(i for i in (tok.eos_id, *extra) if i is not None)


def complete(model, params, tok, prompts, *, add_bos: bool = True, rng=None, **kwargs) -> list:
  """Completions of text prompts (rows: prompt i's j-th sequence at i * n + j).

  kwargs go to `generate` (max_new_tokens, method, temperature, ...); eos_id
  and pad_id default to the tokenizer's.
  """
  ids = [encode_prompt(tok, p, add_bos) for p in prompts]
  kwargs.setdefault("eos_id", _eos_ids(tok))
  kwargs.setdefault("pad_id", tok.pad_id)
  kwargs.setdefault("pad_to_multiple", PAD_MULTIPLE)
  out = generate(model, params, ids, rng=rng, **kwargs)
  eos = kwargs["eos_id"]
  eos = set(eos if isinstance(eos, (tuple, list)) else (eos,))
  return _results(list(prompts), ids, out, tok, eos)


class ChatSession:
  """A multi-turn conversation; each `reply` runs one `generate` over the whole history."""

  def __init__(self, model, params, tok, system: Optional[str] = None, seed: int = 0, **kwargs):
    from llmrl.data import chat

    self.chat, self.model, self.params, self.tok = chat, model, params, tok
    self.kwargs = dict(
      kwargs, eos_id=_eos_ids(tok, getattr(tok, "end_id", None)), pad_id=tok.pad_id
    )
    self.kwargs.setdefault("pad_to_multiple", PAD_MULTIPLE)
    self.system = [chat.Message("system", system)] if system else []
    self.turns: list = []
    self.rng = jax.random.key(seed)
    self.max_len = model.config.max_len

  def _prompt(self) -> list:
    """History ids that fit the context with room for the reply (oldest exchanges dropped)."""
    room = self.max_len - self.kwargs["max_new_tokens"]
    while True:
      ids = self.chat.encode_messages(
        self.tok, self.system + self.turns, add_generation_prompt=True
      ).ids
      if len(ids) <= room or len(self.turns) <= 1:
        return ids.tolist()
      self.turns = self.turns[2:] if len(self.turns) > 2 else self.turns[-1:]

  def reply(self, user_text: str) -> str:
    """The assistant's answer to `user_text` (both are added to the history)."""
    self.turns.append(self.chat.Message("user", user_text))
    self.rng, rng = jax.random.split(self.rng)
    ids = self._prompt()
    out = generate(self.model, self.params, [ids], rng=rng, **self.kwargs)
    answer = _results([user_text], [ids], out, self.tok, set(self.kwargs["eos_id"]))[0].text.strip()
    self.turns.append(self.chat.Message("assistant", answer))
    return answer
