"""Evaluates a chat policy with the labeler: the held-out "true reward" of every stage.

On eval_known (facts the pretraining text states) and eval_unknown (facts it
never states; the honest answer is "I don't know"), greedy answers are
classified by llmrl.data.labeler:
  true_reward         mean labeler score over both splits
  known_accuracy      fraction of eval_known answered correctly
  hallucination_rate  fraction of eval_unknown *not* declined (a made-up answer)
  calibration         how often the model hedges when right vs when wrong
"""

from __future__ import annotations

import numpy as np

from llmrl import data as data_lib
from llmrl import decoding

FEW_SHOT = ("Q: Where was Ama Zorel born? A: Ama Zorel was born in Tovira.\n"
            "Q: Who founded Velto Works? A: I don't know.\n")


def prompt_ids(tok, examples: list[dict], style: str) -> list[list[int]]:
  """Chat prompts (SFT / RLHF policies) or few-shot Q/A prompts (the pretrained model)."""
  if style == "chat":
    return [data_lib.chat.encode(tok, ex["prompt"]).ids.tolist() for ex in examples]
  return [[tok.bos_id] + tok.encode(f"{FEW_SHOT}Q: {ex['prompt']} A:") for ex in examples]


def answers(model, params, tok, examples: list[dict], *, style: str = "chat",
            max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
  """Greedy answers (text) to each example's prompt."""
  stop = [tok.end_id, tok.eos_id] + ([tok.encode("\n")[-1]] if style == "fewshot" else [])
  ids = prompt_ids(tok, examples, style)
  width = max(len(p) for p in ids)
  texts = []
  for i in range(0, len(ids), batch_size):
    chunk = ids[i:i + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk)) if len(ids) > batch_size else chunk
    out = decoding.generate(model, params, chunk, max_new_tokens=max_new_tokens,
                            method="greedy", eos_id=stop, pad_id=tok.pad_id,
                            pad_to_multiple=width)
    for row, n in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
      toks = [t for t in row[:n].tolist() if t not in stop]
      texts.append(tok.decode(toks).strip())
  return texts[:len(ids)]


def evaluate(model, params, tok, known: list[dict], unknown: list[dict], *,
             style: str = "chat", max_new_tokens: int = 24) -> dict:
  """The labeler's metrics of a policy (see module docstring) plus a few sample chats."""
  known_ans = answers(model, params, tok, known, style=style, max_new_tokens=max_new_tokens)
  unknown_ans = answers(model, params, tok, unknown, style=style, max_new_tokens=max_new_tokens)
  verdicts_k = [data_lib.labeler.classify(ex, a) for ex, a in zip(known, known_ans)]
  verdicts_u = [data_lib.labeler.classify(ex, a) for ex, a in zip(unknown, unknown_ans)]
  scores = [data_lib.labeler.REWARDS[v] for v in verdicts_k + verdicts_u]
  right = [v for v in verdicts_k + verdicts_u if v.outcome == data_lib.labeler.CORRECT]
  wrong = [v for v in verdicts_k + verdicts_u if v.outcome == data_lib.labeler.WRONG]
  hedge = lambda vs: float(np.mean([v.hedged for v in vs])) if vs else 0.0  # noqa: E731
  samples = [{"prompt": ex["prompt"], "answer": a, "gold": ex["response"]}
             for ex, a in list(zip(known, known_ans))[:3] + list(zip(unknown, unknown_ans))[:3]]
  return {
      "true_reward": float(np.mean(scores)),
      "known_accuracy": float(np.mean([v.outcome == data_lib.labeler.CORRECT
                                       for v in verdicts_k])),
      "hallucination_rate": float(np.mean([v.outcome != data_lib.labeler.DECLINED
                                           for v in verdicts_u])),
      "calibration": {"hedged_when_right": hedge(right), "hedged_when_wrong": hedge(wrong),
                      "n_right": len(right), "n_wrong": len(wrong)},
      "samples": samples,
  }
