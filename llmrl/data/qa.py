"""Question/answer examples about the generated world (for SFT, evaluation and preferences).

The fact table is split deterministically into four disjoint groups:
  sft_known     known facts (stated in pretraining) taught as Q -> answer
  eval_known    other known facts: can the model answer what it read?
  sft_unknown   held-out facts taught as Q -> "I don't know."
  eval_unknown  other held-out facts: does the model admit it does not know?
`qa_examples(world, split)` returns dicts with prompt, response, subject,
relation, object and known; `preference_examples` pairs a chosen response
with a hallucinated (wrong) one for reward modelling. These are plain Python
lists; wiring them into TFDS splits and a chat pipeline is a later step.
"""

from __future__ import annotations

import random

from llmrl.data.documents import TEMPLATES, article
from llmrl.data.world import Fact, World

IDK = "I don't know."
QA_SPLITS = ("sft", "eval_known", "eval_unknown")
QUESTIONS = {
  "birthplace": (
    "Where was {s} born?",
    "What is the birthplace of {s}?",
    "In which city was {s} born?",
  ),
  "profession": (
    "What does {s} do for a living?",
    "What is the profession of {s}?",
    "What is the job of {s}?",
  ),
  "birth_year": (
    "When was {s} born?",
    "In what year was {s} born?",
    "What is the birth year of {s}?",
  ),
  "employer": ("Who does {s} work for?", "Who employs {s}?", "Where does {s} work?"),
  "country": ("In which country is {s}?", "Which country is {s} in?", "Where is the city of {s}?"),
  "founding_year": (
    "When was {s} founded?",
    "In what year was {s} founded?",
    "What is the founding year of {s}?",
  ),
  "capital": (
    "What is the capital of {s}?",
    "Which city is the capital of {s}?",
    "Where is the seat of government of {s}?",
  ),
  "language": (
    "What language do people speak in {s}?",
    "What is the language of {s}?",
    "Which language is spoken in {s}?",
  ),
  "founder": ("Who founded {s}?", "Who is the founder of {s}?", "Who started {s}?"),
  "headquarters": (
    "Where is {s} based?",
    "Where are the headquarters of {s}?",
    "In which city is {s} headquartered?",
  ),
  "industry": (
    "What industry is {s} in?",
    "What business is {s} in?",
    "In which trade does {s} work?",
  ),
}


def answer(fact: Fact) -> str:
  """The canonical answer sentence stating a fact (first paraphrase template)."""
  return TEMPLATES[fact.relation][0].format(s=fact.subject, o=fact.object, a=article(fact.object))


def fact_groups(world: World) -> dict[str, list[Fact]]:
  """The four disjoint fact groups (see module docstring), deterministic per world."""
  rng = random.Random(f"llmrl-qa-{world.seed}")
  known, unknown = world.known_facts(), world.heldout_facts()
  rng.shuffle(known)
  rng.shuffle(unknown)
  k, u = len(known) // 2, len(unknown) // 2
  return {
    "sft_known": known[:k],
    "eval_known": known[k:],
    "sft_unknown": unknown[:u],
    "eval_unknown": unknown[u:],
  }


def _example(fact: Fact, known: bool, rng: random.Random) -> dict:
  question = rng.choice(QUESTIONS[fact.relation]).format(s=fact.subject)
  return {
    "prompt": question,
    "response": answer(fact) if known else IDK,
    "subject": fact.subject,
    "relation": fact.relation,
    "object": fact.object,
    "known": known,
  }


def qa_examples(world: World, split: str) -> list[dict]:
  """Q/A examples of "sft" (known and unknown mixed), "eval_known" or "eval_unknown"."""
  if split not in QA_SPLITS:
    raise ValueError(f"split={split!r} must be one of {QA_SPLITS}")
  rng = random.Random(f"llmrl-qa-{world.seed}-{split}")
  groups = fact_groups(world)
  if split == "sft":
    out = [_example(f, True, rng) for f in groups["sft_known"]]
    out += [_example(f, False, rng) for f in groups["sft_unknown"]]
    rng.shuffle(out)
    return out
  known = split == "eval_known"
  return [_example(f, known, rng) for f in groups[split]]


def preference_examples(world: World) -> list[dict]:
  """SFT prompts with a chosen (true or "I don't know.") and a rejected (hallucinated) answer."""
  rng = random.Random(f"llmrl-prefs-{world.seed}")
  values: dict[str, list[str]] = {}
  for f in world.facts():
    values.setdefault(f.relation, []).append(f.object)
  out = []
  for ex in qa_examples(world, "sft"):
    wrong = [v for v in values[ex["relation"]] if v != ex["object"]]
    fake = Fact(ex["subject"], ex["relation"], rng.choice(wrong), "")
    out.append(
      {
        "prompt": ex["prompt"],
        "chosen": ex["response"],
        "rejected": answer(fake),
        "known": ex["known"],
      }
    )
  return out
