"""Next-sentence-prediction pairs for BERT pretraining (numpy, deterministic given a Generator).

A pair is built from a document's sentences (Devlin et al. 2019, section 3.1):
segment A is the document's first `cut` sentences (cut drawn uniformly in
[1, sentences - 1]); with probability 1/2, B is the rest of that document
(label 0, "is next"), otherwise B is a run of sentences from a different
document starting at a random sentence (label 1, "random"), following
transformers' label convention. A one-sentence document is cut in the middle
of its tokens. Pairs longer than the budget are trimmed from the longer side
(A loses tokens at its start, B at its end, so the A|B boundary stays intact).
The packed example is `[CLS] A [SEP] B [SEP]` with token types 0 for
`[CLS] A [SEP]` and 1 for `B [SEP]`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

IS_NEXT, RANDOM_NEXT = 0, 1
_SENTENCE_ENDS = (".", "?", "!")


def sentence_end_ids(tok) -> np.ndarray:
  """Ids of the pieces that end a sentence (".", "?", "!", and newlines) for a Tokenizer."""
  ends = []
  for i in range(tok.vocab_size):
    piece = tok.id_to_piece(i).replace("\u2581", " ").rstrip()
    if piece.endswith(_SENTENCE_ENDS) or tok.id_to_piece(i) == "<0x0A>":
      ends.append(i)
  return np.asarray(ends, np.int64)


def split_sentences(tokens: np.ndarray, end_ids: np.ndarray) -> list:
  """Token ids [n] -> list of sentences (each ending with an end id, the last maybe not)."""
  tokens = np.asarray(tokens)
  cuts = np.flatnonzero(np.isin(tokens, end_ids)) + 1
  return [s for s in np.split(tokens, cuts) if len(s)]


def _trim(la: int, lb: int, budget: int) -> tuple[int, int]:
  """Lengths after trimming the longer side first until la + lb <= budget."""
  excess = la + lb - budget
  if excess <= 0:
    return la, lb
  d = min(excess, abs(la - lb))
  la, lb = (la - d, lb) if la > lb else (la, lb - d)
  excess -= d
  la, lb = la - (excess + 1) // 2, lb - excess // 2
  return max(la, 0), max(lb, 0)


def nsp_pair(
  sentences: Sequence[np.ndarray],
  other: Optional[Sequence[np.ndarray]],
  rng: np.random.Generator,
  max_tokens: int,
) -> tuple[np.ndarray, np.ndarray, int]:
  """(A tokens, B tokens, label): B follows A when `other` is None, else B comes from `other`."""
  if len(sentences) >= 2:
    cut = int(rng.integers(1, len(sentences)))
    a, rest = np.concatenate(sentences[:cut]), np.concatenate(sentences[cut:])
  else:
    whole = np.concatenate(sentences) if sentences else np.zeros(0, np.int32)
    a, rest = whole[: max(1, len(whole) // 2)], whole[max(1, len(whole) // 2) :]
  if other is None:
    b, label = rest, IS_NEXT
  else:
    start = int(rng.integers(0, len(other))) if len(other) else 0
    b, label = (np.concatenate(other[start:]) if len(other) else np.zeros(0, np.int32)), RANDOM_NEXT
  la, lb = _trim(len(a), len(b), max_tokens)
  return a[len(a) - la :], b[:lb], label


def pack_pair(a: np.ndarray, b: np.ndarray, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
  """[CLS] A [SEP] B [SEP] padded to seq_len -> (ids, token_type_ids, attention_mask) int32 [seq_len]."""
  n = len(a) + len(b) + 3
  if n > seq_len:
    raise ValueError(f"pair of {len(a)} + {len(b)} tokens does not fit seq_len={seq_len}")
  ids = np.full(seq_len, pad_id, np.int32)
  ids[:n] = np.concatenate([[cls_id], a, [sep_id], b, [sep_id]])
  types = np.zeros(seq_len, np.int32)
  types[len(a) + 2 : n] = 1
  mask = (np.arange(seq_len) < n).astype(np.int32)
  return ids, types, mask
