"""Evaluates a chat policy with the labeler: the held-out "true reward" of every stage.

On eval_known (facts the pretraining text states) and eval_unknown (facts it
never states; the honest answer is "I don't know"), greedy answers are
scored by llmrl.data.labeler. `summarize` turns the per-question verdicts into:
  true_reward              mean labeler score over both splits
  true_reward_ci           bootstrap 90% interval of it, resampling facts (a fact asked
                           in several wordings moves as one cluster); every rate below
                           has its `<name>_ci` from the same resamples
  answer_rate              fraction of questions not declined
  accuracy_when_answering  fraction correct among the answered questions (break-even of
                           the reward: 0.8)
  known_accuracy           fraction of eval_known answered correctly
  known_accuracy_when_answering  the same among the answered eval_known questions
  hallucination_rate       fraction of eval_unknown *not* declined (a made-up answer)
  num_questions, num_facts
`baselines` scores two trivial policies on the same questions: always_decline
(every answer "I don't know.") and oracle_decline (a reference policy's answer
when it is right, "I don't know." otherwise: the best a perfectly calibrated
version of that policy could do).
"""

from __future__ import annotations

import numpy as np

from llmrl import data as data_lib
from llmrl import decoding

labeler = data_lib.labeler
FEW_SHOT = ("Q: Where was Ama Zorel born? A: Ama Zorel was born in Tovira.\n"
            "Q: Who founded Velto Works? A: I don't know.\n")
BOOTSTRAP_SAMPLES = 2000
CI_LEVEL = 0.90


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


def fact_id(example: dict) -> str:
  """The fact a question asks about (several wordings of one fact share it)."""
  return example.get("fact_id") or f"{example['subject']}|{example['relation']}"


def judge(examples: list[dict], texts: list[str]) -> list[dict]:
  """One record per question: fact, known, answer, outcome, hedged, score."""
  out = []
  for ex, text in zip(examples, texts, strict=True):
    v = labeler.classify(ex, text)
    out.append({"fact": fact_id(ex), "known": bool(ex["known"]), "answer": text,
                "outcome": v.outcome, "hedged": bool(v.hedged), "score": labeler.REWARDS[v]})
  return out


def _metrics(score, answered, correct, known) -> dict:
  """The summary metrics from per-question arrays (see module docstring)."""
  def ratio(num, den):
    return float(num.sum() / den.sum()) if den.sum() else float("nan")
  return {"true_reward": float(score.mean()),
          "answer_rate": float(answered.mean()),
          "accuracy_when_answering": ratio(correct & answered, answered),
          "known_accuracy": ratio(correct & known, known),
          "known_accuracy_when_answering": ratio(correct & known, answered & known),
          "hallucination_rate": ratio(answered & ~known, ~known)}


def summarize(records: list[dict], *, seed: int = 0) -> dict:
  """Metrics of per-question records with a bootstrap 90% interval of the true reward
  (facts resampled with replacement, BOOTSTRAP_SAMPLES times, percentile interval)."""
  if not records:
    raise ValueError("no evaluation records to summarize")
  score = np.asarray([r["score"] for r in records], np.float64)
  answered = np.asarray([r["outcome"] != labeler.DECLINED for r in records])
  correct = np.asarray([r["outcome"] == labeler.CORRECT for r in records])
  known = np.asarray([r["known"] for r in records])
  facts = sorted({r["fact"] for r in records})
  index = {f: i for i, f in enumerate(facts)}
  cluster = np.asarray([index[r["fact"]] for r in records])
  rng = np.random.default_rng(seed)
  # [samples, facts]: how often each resample draws each fact.
  draws = rng.multinomial(len(facts), np.full(len(facts), 1 / len(facts)), BOOTSTRAP_SAMPLES)
  tail = (1 - CI_LEVEL) / 2

  def interval(num, den):
    """Percentile interval of sum(num) / sum(den) over the resamples (per-fact sums)."""
    with np.errstate(invalid="ignore", divide="ignore"):
      boot = (draws @ np.bincount(cluster, num, len(facts))) / (
          draws @ np.bincount(cluster, den, len(facts)))  # [samples]
    boot = boot[np.isfinite(boot)]
    return [float(x) for x in np.quantile(boot, [tail, 1 - tail])] if len(boot) else [
        float("nan")] * 2

  ones = np.ones(len(records))
  cis = {"true_reward_ci": interval(score, ones),
         "answer_rate_ci": interval(answered, ones),
         "accuracy_when_answering_ci": interval(correct & answered, answered),
         "known_accuracy_ci": interval(correct & known, known),
         "known_accuracy_when_answering_ci": interval(correct & known, answered & known),
         "hallucination_rate_ci": interval(answered & ~known, ~known)}
  return {**_metrics(score, answered, correct, known), **cis,
          "num_questions": len(records), "num_facts": len(facts)}


def paired_difference(records: list[dict], reference: list[dict], *, seed: int = 0) -> dict:
  """Mean true-reward difference (records - reference) on the same questions, with a
  bootstrap 90% interval from resampling facts (both policies' answers move together)."""
  if [r["fact"] for r in records] != [r["fact"] for r in reference]:
    raise ValueError("paired_difference needs both policies' answers to the same questions, "
                     "in the same order")
  diff = [{**r, "score": r["score"] - q["score"]} for r, q in zip(records, reference)]
  out = summarize(diff, seed=seed)
  return {"difference": out["true_reward"], "difference_ci": out["true_reward_ci"],
          "num_questions": out["num_questions"]}


def baselines(reference: list[dict]) -> dict[str, list[dict]]:
  """always_decline and oracle_decline records on the questions of `reference`."""
  def declined(r):
    return {**r, "answer": labeler.IDK, "outcome": labeler.DECLINED, "hedged": False,
            "score": labeler.REWARDS[(labeler.DECLINED, False)]}
  return {"always_decline": [declined(r) for r in reference],
          "oracle_decline": [r if r["outcome"] == labeler.CORRECT else declined(r)
                             for r in reference]}


def calibration(records: list[dict]) -> dict:
  """How often the policy hedges when right vs when wrong."""
  right = [r for r in records if r["outcome"] == labeler.CORRECT]
  wrong = [r for r in records if r["outcome"] == labeler.WRONG]
  hedge = lambda rs: float(np.mean([r["hedged"] for r in rs])) if rs else 0.0  # noqa: E731
  return {"hedged_when_right": hedge(right), "hedged_when_wrong": hedge(wrong),
          "n_right": len(right), "n_wrong": len(wrong)}


def evaluate(model, params, tok, known: list[dict], unknown: list[dict], *,
             style: str = "chat", max_new_tokens: int = 24) -> dict:
  """The labeler's metrics of a policy (see module docstring), its per-question records
  ("records") and a few sample chats."""
  examples = known + unknown
  texts = answers(model, params, tok, examples, style=style, max_new_tokens=max_new_tokens)
  records = judge(examples, texts)
  samples = [{"prompt": ex["prompt"], "answer": a, "gold": ex["response"]}
             for ex, a in list(zip(known, texts))[:3] + list(zip(unknown, texts[len(known):]))[:3]]
  return {**summarize(records), "calibration": calibration(records), "samples": samples,
          "records": records}
