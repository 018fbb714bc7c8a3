"""The chat template: system/user/assistant turns delimited by the tokenizer's role markers.

A conversation renders as

    <|system|> {system}<|end|><|user|> {prompt}<|end|><|assistant|> {response}<|end|>

(no newlines; one space after each role marker, which sentencepiece's dummy
prefix produces when a turn is encoded on its own). `encode` builds token ids
turn by turn, so every role marker is exactly one id whatever the text, the
prompt/response boundary is exact, and `tok.decode(ids)` gives back the
rendered text. A generation prompt ends with `<|assistant|>`; the model
answers and stops with `<|end|>` (pass `eos_id=tok.end_id` to decoding).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from llmrl.data.config import DataConfigError
from llmrl.data.tokenizer import ROLE_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant")
MARKERS = dict(zip(ROLES + ("end",), ROLE_TOKENS))
SYSTEM_PROMPT = "Answer, or say I don't know."


class Message(NamedTuple):
  role: str  # system | user | assistant
  content: str


class ChatIds(NamedTuple):
  """Token ids of a conversation and which of them an SFT loss should train on."""

  ids: np.ndarray  # [len] int32: [bos] then the turns
  loss_mask: np.ndarray  # [len] bool: True on assistant contents and their <|end|>


def messages(prompt: str, response: str | None = None, system: str | None = SYSTEM_PROMPT):
  """The turns of a one-question conversation (system omitted when None)."""
  out = [Message("system", system)] if system is not None else []
  out.append(Message("user", prompt))
  if response is not None:
    out.append(Message("assistant", response))
  return out


def _check(turns: Sequence[Message]) -> None:
  for m in turns:
    if m.role not in ROLES:
      raise ValueError(f"chat role {m.role!r} must be one of {ROLES}")


def render_messages(turns: Sequence[Message], add_generation_prompt: bool = False) -> str:
  """The chat text of turns; with add_generation_prompt, ends with an open <|assistant|> turn."""
  _check(turns)
  text = "".join(f"{MARKERS[m.role]} {m.content}{MARKERS['end']}" for m in turns)
  return text + (MARKERS["assistant"] if add_generation_prompt else "")


def render(prompt: str, response: str | None = None, system: str | None = SYSTEM_PROMPT) -> str:
  """Chat text of one question; without a response it is the generation prompt."""
  return render_messages(messages(prompt, response, system), add_generation_prompt=response is None)


def encode_messages(
  tok: Tokenizer,
  turns: Sequence[Message],
  add_generation_prompt: bool = False,
  add_bos: bool = True,
) -> ChatIds:
  """Token ids of turns (see module docstring); role markers are single ids."""
  _check(turns)
  if None in tok.role_ids.values():
    raise DataConfigError(
      f"tokenizer {tok.path} has no chat role markers {ROLE_TOKENS}; train one with "
      "llmrl.data.train_tokenizer or set config.data.tokenizer=''"
    )
  ids: list[int] = [tok.bos_id] if add_bos and tok.bos_id is not None else []
  mask: list[bool] = [False] * len(ids)
  contents = tok.encode_batch([m.content for m in turns], num_threads=1) if turns else []
  for m, content in zip(turns, contents):
    part = [tok.role_ids[m.role], *content, tok.end_id]
    ids += part
    train = m.role == "assistant"
    mask += [False] + [train] * (len(part) - 1)
  if add_generation_prompt:
    ids.append(tok.assistant_id)
    mask.append(False)
  return ChatIds(np.asarray(ids, np.int32), np.asarray(mask, bool))


def encode(
  tok: Tokenizer,
  prompt: str,
  response: str | None = None,
  system: str | None = SYSTEM_PROMPT,
  add_bos: bool = True,
) -> ChatIds:
  """Ids of one question (and answer); without a response, a prompt ending in <|assistant|>."""
  turns = messages(prompt, response, system)
  return encode_messages(tok, turns, add_generation_prompt=response is None, add_bos=add_bos)
