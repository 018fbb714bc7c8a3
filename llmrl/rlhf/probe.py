"""Knowledge probe: does the pretrained model know a fact? Used to decline in SFT.

Supervised answers to questions the model cannot answer teach it to guess
(John Schulman's point on hallucination in the talk this project started
from). The probe reads, for each known-fact SFT example, the pretrained
model's probability of the gold object after the answer sentence's prefix,
e.g. P("Vosom Institute" | "<bos> Zhiazhil Floufliar works for"), the way the
pretraining text states facts. With config.decline_below = tau > 0, SFT
examples whose probability is below tau are trained to answer "I don't
know." instead (BUILD_NOTES "Knowledge-aware SFT").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmrl import data as data_lib


def object_spans(tok, examples: list[dict]) -> tuple[list[list[int]], list[tuple[int, int]]]:
  """Token ids [bos] + "<prefix> <object>" per example and the object's token span [a, b)."""
  rows, spans = [], []
  for ex in examples:
    response, obj = ex["response"], ex["object"]
    at = response.find(obj)
    if at < 0:
      raise ValueError(f"the response {response!r} does not state its object {obj!r}; the knowledge "
                       "probe needs known-fact answers (examples with known=True).")
    prefix = tok.encode(response[:at].rstrip())
    full = tok.encode(response[:at] + obj)
    shared = 0
    while shared < min(len(prefix), len(full)) and prefix[shared] == full[shared]:
      shared += 1
    rows.append([tok.bos_id] + full)
    spans.append((1 + shared, 1 + len(full)))
  return rows, spans


def object_probability(model, params, tok, examples: list[dict], batch_size: int = 64):
  """P(gold object | answer-sentence prefix) under `model` for each example -> [N] float64."""
  rows, spans = object_spans(tok, examples)
  width = max(len(r) for r in rows)
  forward = jax.jit(lambda p, ids: jax.nn.log_softmax(
      model.apply({"params": p}, ids).astype(jnp.float32)))
  out = np.zeros(len(rows))
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    ids = np.full((batch_size, width), tok.pad_id, np.int32)  # one shape: one compile
    for j, r in enumerate(chunk):
      ids[j, :len(r)] = r
    logp = np.asarray(forward(params, jnp.asarray(ids)))  # [batch, width, vocab]
    for j in range(len(chunk)):
      a, b = spans[start + j]
      out[start + j] = sum(float(logp[j, t - 1, ids[j, t]]) for t in range(a, b))
  return np.exp(out)


def decline_unknown(examples: list[dict], model, params, tok, below: float) -> tuple[list, dict]:
  """SFT examples with known facts the model does not know (probability < below) relabelled
  to "I don't know."; returns (examples, stats)."""
  known = [i for i, ex in enumerate(examples) if ex["known"]]
  probs = object_probability(model, params, tok, [examples[i] for i in known])
  out = list(examples)
  for i, p in zip(known, probs):
    if p < below:
      ex = dict(out[i], response=data_lib.labeler.IDK, probe_probability=float(p))
      ex["text"] = data_lib.chat.render(ex["prompt"], ex["response"])
      out[i] = ex
  declined = int(np.sum(probs < below))
  stats = {"known": len(known), "declined": declined,
           "median_probability": float(np.median(probs)) if len(probs) else 0.0}
  return out, stats
