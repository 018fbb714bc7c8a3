"""T5 span corruption (llmrl.objectives.span_corruption): references from the T5 paper/code and math."""

import jax.numpy as jnp
import numpy as np
import pytest

from llmrl.objectives.span_corruption import (
  corrupt_with_mask,
  corrupted_lengths,
  random_spans_noise_mask,
  raw_length_for,
  span_corrupt,
  span_corruption_loss,
)

SENTINELS = np.arange(5, 105)  # llmrl: <extra_id_i> = 5 + i
EOS = 1


def test_documented_example():
  # "a b c d e f g" with noise "c d" and "g" (the module docstring's example).
  tokens = np.array([200, 201, 202, 203, 204, 205, 206])
  noise = np.array([0, 0, 1, 1, 0, 0, 1], bool)
  inputs, targets = corrupt_with_mask(tokens, noise, SENTINELS, EOS)
  np.testing.assert_array_equal(inputs, [200, 201, 5, 204, 205, 6, EOS])
  np.testing.assert_array_equal(targets, [5, 202, 203, 6, 206, EOS])


@pytest.mark.parametrize("length", [2, 3, 10, 57, 200, 568])
def test_noise_mask_counts_and_shape(length):
  for seed in range(20):
    mask = random_spans_noise_mask(length, np.random.default_rng(seed))
    noise = min(max(round(length * 0.15), 1), length - 1)
    spans = min(max(round(noise / 3), 1), noise, length - noise)
    assert mask.sum() == noise
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert starts.sum() == spans
    assert not mask[0] and mask[-1]  # starts with non-noise, ends with noise


def test_mean_span_length_and_determinism():
  lengths = []
  for seed in range(200):
    mask = random_spans_noise_mask(568, np.random.default_rng(seed))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    lengths += list(edges[1::2] - edges[::2])
  assert abs(np.mean(lengths) - 85 / 28) < 1e-9  # every mask: 85 noise tokens in 28 spans
  assert np.std(lengths) > 1.0  # span lengths vary
  a = random_spans_noise_mask(100, np.random.default_rng(7))
  np.testing.assert_array_equal(a, random_spans_noise_mask(100, np.random.default_rng(7)))
  assert not np.array_equal(a, random_spans_noise_mask(100, np.random.default_rng(8)))


def test_inputs_and_targets_reconstruct_the_text():
  rng = np.random.default_rng(0)
  for n in (2, 5, 30, 300):
    tokens = rng.integers(200, 900, n)
    inputs, targets = span_corrupt(tokens, np.random.default_rng(n), SENTINELS, EOS)
    assert inputs[-1] == EOS and targets[-1] == EOS
    assert (len(inputs), len(targets)) == corrupted_lengths(n)
    # Fill every sentinel of the inputs with the target span that follows that sentinel.
    spans, cur = {}, None
    for t in targets[:-1]:
      if t in SENTINELS:
        cur = int(t)
        spans[cur] = []
      else:
        spans[cur].append(int(t))
    rebuilt = [x for t in inputs[:-1] for x in (spans[int(t)] if t in SENTINELS else [int(t)])]
    np.testing.assert_array_equal(rebuilt, tokens)
    # Sentinels appear in increasing order <extra_id_0>, <extra_id_1>, ...
    used = [int(t) for t in inputs if t in SENTINELS]
    assert used == list(range(5, 5 + len(used)))


def test_lengths_match_t5():
  # T5's random_spans_helper / HF run_t5_mlm_flax: inputs 512 -> 568 raw tokens, 114 targets.
  assert raw_length_for(512) == (568, 114)
  assert corrupted_lengths(568) == (512, 114)
  raw, tgt = raw_length_for(64)
  assert corrupted_lengths(raw)[0] <= 64 < corrupted_lengths(raw + 1)[0]


def test_too_many_spans_is_an_error():
  with pytest.raises(ValueError, match="sentinel ids"):
    span_corrupt(np.arange(400) + 200, np.random.default_rng(0), SENTINELS[:3], EOS)


def test_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 4, 9)).astype(np.float32)
  targets = rng.integers(0, 9, (2, 4))
  weights = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  total, (weight, sums) = span_corruption_loss(
    jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
  )
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(total, (nll * weights).sum(), rtol=1e-5)
  assert weight == 5
