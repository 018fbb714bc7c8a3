"""T5 span corruption (Raffel et al. 2020, section 3.1.4) in numpy, and its loss.

For a token sequence of length n, `random_spans_noise_mask` marks
round(n * noise_density) tokens as noise, in round(noise / mean_span_length)
spans; noise and non-noise span lengths are random segmentations (the
sequence starts with non-noise and ends with noise), exactly the algorithm of
t5.data.preprocessors.random_spans_noise_mask. Then

    inputs  = non-noise tokens, each noise span replaced by one sentinel, + [eos]
    targets = each noise span preceded by its sentinel, + [eos]

e.g. "a b c d e f g" with noise spans "c d" and "g":
inputs "a b <extra_id_0> e f <extra_id_1> </s>", targets
"<extra_id_0> c d <extra_id_1> g </s>".

Sentinel mapping: span i uses <extra_id_i>, as in T5. T5's vocabulary puts
<extra_id_0> at the last id and counts down (id = vocab_size - 1 - i);
llmrl's tokenizer reserves ids 5..104 for <extra_id_0..99>, so span i gets
id 5 + i (`Tokenizer.sentinel_ids[i]`), counting up. At most 100 spans fit
(inputs of up to ~2000 raw tokens at the default density and span length).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmrl.objectives.lm import causal_lm_loss


def _counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) for a sequence of `length` tokens (length >= 2)."""
  noise = min(max(int(round(length * noise_density)), 1), length - 1)
  spans = max(int(round(noise / mean_span_length)), 1)
  return noise, min(spans, noise, length - noise)


def random_spans_noise_mask(
  length: int,
  rng: np.random.Generator,
  noise_density: float = 0.15,
  mean_span_length: float = 3.0,
) -> np.ndarray:
  """Bool [length]: True = noise. Needs length >= 2."""
  if length < 2:
    raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
  noise, spans = _counts(length, noise_density, mean_span_length)

  def segment_lengths(items: int) -> np.ndarray:  # random split of `items` into `spans` parts >= 1
    first = np.arange(items - 1) < spans - 1
    rng.shuffle(first)
    ids = np.cumsum(np.concatenate([[False], first]))
    return np.bincount(ids, minlength=spans)

  noise_lengths = segment_lengths(noise)
  keep_lengths = segment_lengths(length - noise)
  interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # [2 * spans]
  starts = np.cumsum(interleaved)[:-1]
  indicator = np.zeros(length, bool)
  indicator[starts] = True
  return np.cumsum(indicator) % 2 == 1


def _replace_spans(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
  """Each run of True in mask -> one sentinel (run i -> sentinels[i]); False tokens kept."""
  first = mask & ~np.concatenate([[False], mask[:-1]])
  index = np.cumsum(first) - 1
  if first.sum() > len(sentinels):
    raise ValueError(
      f"{int(first.sum())} spans need more than the {len(sentinels)} sentinel ids; "
      "use shorter inputs or a lower noise density"
    )
  out = np.where(first, sentinels[np.maximum(index, 0)], tokens)
  return out[~mask | first]


def span_corrupt(
  tokens,
  rng: np.random.Generator,
  sentinel_ids: Sequence[int],
  eos_id: int,
  noise_density: float = 0.15,
  mean_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids [n] (no eos) -> (inputs, targets) int32, both ending with eos."""
  tokens = np.asarray(tokens, np.int32)
  sentinels = np.asarray(sentinel_ids, np.int32)
  eos = np.asarray([eos_id], np.int32)
  if len(tokens) < 2:
    return np.concatenate([tokens, eos]), eos.copy()
  noise = random_spans_noise_mask(len(tokens), rng, noise_density, mean_span_length)
  return corrupt_with_mask(tokens, noise, sentinels, eos_id)


def corrupt_with_mask(tokens, noise, sentinel_ids, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) for a given noise mask [n] (starting with non-noise), both + eos."""
  tokens = np.asarray(tokens, np.int32)
  noise = np.asarray(noise, bool)
  sentinels = np.asarray(sentinel_ids, np.int32)
  eos = np.asarray([eos_id], np.int32)
  inputs = _replace_spans(tokens, noise, sentinels)
  # Targets: the non-noise spans become the sentinels (non-noise span i precedes noise span i).
  targets = _replace_spans(tokens, ~noise, sentinels)
  return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def corrupted_lengths(
  raw_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
  """(inputs, targets) lengths, eos included, after corrupting `raw_length` tokens."""
  if raw_length < 2:
    return raw_length + 1, 1
  noise, spans = _counts(raw_length, noise_density, mean_span_length)
  return raw_length - noise + spans + 1, noise + spans + 1


def raw_length_for(
  inputs_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
  """(raw tokens, targets length): the longest raw text whose inputs fit `inputs_length`.

  T5's random_spans_helper: e.g. inputs_length=512 at the defaults takes 568
  raw tokens and needs 114 target tokens.
  """
  if inputs_length < 3:
    raise ValueError(f"inputs_length={inputs_length} must be >= 3")
  raw = 2
  while corrupted_lengths(raw + 1, noise_density, mean_span_length)[0] <= inputs_length:
    raw += 1
  return raw, corrupted_lengths(raw, noise_density, mean_span_length)[1]


def span_corruption_loss(logits, targets, weights):
  """Token cross-entropy of the decoder outputs, (sum, (weight, sums)); weight = target tokens.

  logits [batch, dec_len, vocab]; targets, weights [batch, dec_len]. The same
  sum as llmrl.objectives.lm.causal_lm_loss (the targets are already shifted).
  """
  return causal_lm_loss(logits, targets, weights)
