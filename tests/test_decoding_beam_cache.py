"""Beam search's never-reordered KV cache ("beam" layout) against a numpy reference."""

import numpy as np
import jax.numpy as jnp

from llmrl.models.attention import beam_cache_attention


def test_beam_cache_attention_matches_gathered_numpy_attention():
  """Each row attends over its own history: slot t read from the beam parent[row, t] wrote.

  GQA (4 query heads on 2 kv heads), a padded prompt slot (segment 0) and
  slots after the query (not yet written) must not be seen.
  """
  prompts, beams, kvh, g, d, length, now = 2, 3, 2, 2, 8, 6, 4
  rows, h = prompts * beams, kvh * g
  rng = np.random.RandomState(0)
  q = rng.randn(rows, 1, h, d).astype(np.float32)
  keys = rng.randn(prompts, kvh, length, beams, d).astype(np.float32)  # [p, kvh, slot, beam, d]
  values = rng.randn(prompts, kvh, length, beams, d).astype(np.float32)
  parent = rng.randint(0, beams, (rows, length)).astype(np.int32)
  parent[:, :2] = 0  # prompt slots: shared, read from beam 0
  k_segment = np.ones((rows, length), np.int32)
  k_segment[beams:, 0] = 0  # the second prompt is left-padded: slot 0 is padding

  # Reference: gather each row's keys/values slot by slot, then plain softmax attention.
  want = np.zeros((rows, h, d), np.float32)
  for r in range(rows):
    p = r // beams
    for head in range(h):
      n = head // g
      ks = np.stack([keys[p, n, t, parent[r, t]] for t in range(length)])  # [len, d]
      vs = np.stack([values[p, n, t, parent[r, t]] for t in range(length)])
      s = ks @ q[r, 0, head] / np.sqrt(d)
      seen = (np.arange(length) <= now) & (k_segment[r] == 1)
      s = np.where(seen, s, -np.inf)
      w = np.exp(s - s.max())
      want[r, head] = (w / w.sum()) @ vs

  flat = lambda x: x.reshape(prompts, kvh, length * beams, d)  # noqa: E731 - slot s, beam j at s*k+j
  got = beam_cache_attention(
    jnp.asarray(q),
    jnp.swapaxes(jnp.asarray(flat(keys)), 2, 3),  # keys transposed [p, kvh, d, len * k]
    jnp.asarray(flat(values)),
    jnp.asarray(parent),
    jnp.asarray([now]),
    jnp.ones((rows, 1), jnp.int32),
    jnp.asarray(k_segment),
  )
  np.testing.assert_allclose(np.asarray(got)[:, 0], want, rtol=1e-5, atol=1e-5)
