"""Question/answer splits of the generated world: sft, preferences, eval_known, eval_unknown.

The fact table is split deterministically into six disjoint groups:
  sft_known     half of the known facts (stated in pretraining): Q -> answer
  rl_known      a quarter of the known facts: the reward model's rankings
                and the PPO prompts ask about them; SFT never drills them,
                so the policy is as unsure of them as of eval_known
  eval_known    the last quarter: can the model answer what it read but was
                never drilled on? (never an SFT, preference or PPO prompt)
  sft_unknown   40% of the held-out facts: Q -> "I don't know." (a modest
                fraction of sft: about 8%)
  rl_unknown    20% of the held-out facts, ranked ("I don't know" best)
  eval_unknown  the last 40%: does the model admit it does not know?
                Never stated in pretraining, sft or preferences.
Held-out *entities* (people never mentioned in pretraining) go to one group
whole, so eval_unknown asks about people SFT and the reward model never saw
declined; held-out single attributes of known entities are split one by one.

Splits (lists of dicts, see `SPLIT_FIELDS` in builders.py for the stored form):
  sft           sft_known + sft_unknown, shuffled: prompt, response, text
                (rendered chat), subject, relation, object, known, fact_id
                ("subject|relation"), alternatives (see `relation_alternatives`)
  eval_known    same fields, gold response = the answer sentence; each fact
                asked in `eval_wordings` different wordings (1..3), one
                example each, sharing a fact_id
  eval_unknown  same fields, gold response "I don't know." (object is the
                hidden true value, so generated guesses can be scored)
  preferences   prompts about the rl facts (config.data.prompts_per_fact
                each, differently worded) with K candidate responses
                (correct or wrong, hedged or not, "I don't know") scored by
                `labeler.score(example, response)` and ranked (0 = best):
                eval's fields but responses, scores and ranks for response;
                PPO samples its prompts from this split too (InstructGPT's
                RM and PPO prompts are likewise disjoint from the SFT ones)
"""

from __future__ import annotations

import random

from llmrl.data import chat, labeler
from llmrl.data.config import MAX_EVAL_WORDINGS, MAX_RESPONSES
from llmrl.data.documents import TEMPLATES, article
from llmrl.data.labeler import IDK
from llmrl.data.world import RELATIONS, Fact, World

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
# What kind of thing each relation's values are: relations of one domain share
# one alternatives list (a city named in a birthplace answer is another value).
# Years have none: the labeler counts any other 3-4 digit number instead.
VALUE_DOMAINS = {
  "birthplace": "city",
  "headquarters": "city",
  "capital": "city",
  "country": "country",
  "language": "language",
  "profession": "profession",
  "industry": "industry",
  "employer": "org",
  "founder": "person",
  "birth_year": "year",
  "founding_year": "year",
}
# (outcome, hedged) of the candidate kinds for a question the model can know.
KNOWN_CANDIDATES = (
  (labeler.CORRECT, False),
  (labeler.CORRECT, True),
  (labeler.DECLINED, False),
  (labeler.WRONG, True),
  (labeler.WRONG, False),
)


def answer(fact: Fact) -> str:
  """The canonical answer sentence stating a fact (first paraphrase template)."""
  return TEMPLATES[fact.relation][0].format(s=fact.subject, o=fact.object, a=article(fact.object))


def _unknown_parts(groups: list[list[Fact]], rng: random.Random) -> list[list[Fact]]:
  """Held-out fact groups shuffled into sft (40%), rl (20%) and eval (40%) parts."""
  rng.shuffle(groups)
  n = len(groups)
  cuts = [0, round(0.4 * n), round(0.6 * n), n]
  return [[f for g in groups[a:b] for f in g] for a, b in zip(cuts, cuts[1:])]


def fact_groups(world: World) -> dict[str, list[Fact]]:
  """The six disjoint fact groups (see module docstring), deterministic per world."""
  rng = random.Random(f"llmrl-qa-{world.seed}")
  known = world.known_facts()
  rng.shuffle(known)
  half, three_quarters = len(known) // 2, (3 * len(known)) // 4
  unknown = world.heldout_facts()
  entities = [[f for f in unknown if f.subject == name] for name in world.heldout_entities]
  attrs = [[f] for f in unknown if f.subject not in world.heldout_entities]
  sft_entities, rl_entities, eval_entities = _unknown_parts(entities, rng)
  sft_attrs, rl_attrs, eval_attrs = _unknown_parts(attrs, rng)
  return {
    "sft_known": known[:half],
    "rl_known": known[half:three_quarters],
    "eval_known": known[three_quarters:],
    "sft_unknown": sft_entities + sft_attrs,
    "rl_unknown": rl_entities + rl_attrs,
    "eval_unknown": eval_entities + eval_attrs,
  }


def relation_alternatives(world: World) -> dict[str, list[str]]:
  """Every value each relation's domain takes in the world (sorted), for the labeler.

  Values of all facts, known and held out, of every relation in the same
  `VALUE_DOMAINS` domain; the true object of any fact is among them, so the
  list, the same for every question about the relation, singles nothing out.
  The labeler counts a response naming any value but the object as wrong.
  Year relations get [] (`labeler.NUMERIC_RELATIONS`: any other number counts).
  """
  pools: dict[str, set[str]] = {}
  for f in world.facts():
    pools.setdefault(VALUE_DOMAINS[f.relation], set()).add(f.object)
  relations = sorted({r for rs in RELATIONS.values() for r in rs})
  return {
    r: [] if r in labeler.NUMERIC_RELATIONS else sorted(pools.get(VALUE_DOMAINS[r], ()))
    for r in relations
  }


def fact_id(fact: Fact) -> str:
  """The id shared by every question about one fact: "subject|relation"."""
  return f"{fact.subject}|{fact.relation}"


def _fields(fact: Fact, known: bool, alternatives: dict[str, list[str]]) -> dict:
  """The fields every QA and preference example has, besides its prompt and responses."""
  return {
    "subject": fact.subject,
    "relation": fact.relation,
    "object": fact.object,
    "known": known,
    "fact_id": fact_id(fact),
    "alternatives": list(alternatives[fact.relation]),
  }


def _wordings(relation: str, n: int, rng: random.Random) -> list[str]:
  """n distinct question templates: a random first one, then the next ones in order."""
  templates = QUESTIONS[relation]
  i = templates.index(rng.choice(templates))
  return [templates[(i + j) % len(templates)] for j in range(n)]


def _examples(fact: Fact, known: bool, alternatives, rng: random.Random, n: int = 1) -> list[dict]:
  """n QA examples about `fact`, each worded differently, with the gold response."""
  response = answer(fact) if known else IDK
  out = []
  for template in _wordings(fact.relation, n, rng):
    question = template.format(s=fact.subject)
    out.append(
      {
        "prompt": question,
        "response": response,
        "text": chat.render(question, response),
        **_fields(fact, known, alternatives),
      }
    )
  return out


def qa_examples(world: World, split: str, eval_wordings: int = 1) -> list[dict]:
  """Examples of "sft" (known and unknown mixed), "eval_known" or "eval_unknown".

  eval_wordings: questions per eval fact, each worded differently (one
  example each, sharing a fact_id; the first is the one eval_wordings=1
  asks); sft asks each fact once.
  """
  if split not in QA_SPLITS:
    raise ValueError(f"split={split!r} must be one of {QA_SPLITS}")
  if not 1 <= eval_wordings <= MAX_EVAL_WORDINGS:
    raise ValueError(f"eval_wordings={eval_wordings} must be in [1, {MAX_EVAL_WORDINGS}]")
  rng = random.Random(f"llmrl-qa-{world.seed}-{split}")
  groups = fact_groups(world)
  alts = relation_alternatives(world)
  if split == "sft":
    out = [e for f in groups["sft_known"] for e in _examples(f, True, alts, rng)]
    out += [e for f in groups["sft_unknown"] for e in _examples(f, False, alts, rng)]
    rng.shuffle(out)
    return out
  known = split == "eval_known"
  return [e for f in groups[split] for e in _examples(f, known, alts, rng, eval_wordings)]


def relation_values(world: World) -> dict[tuple[str, str], list[str]]:
  """Values that known facts give each (subject kind, relation): the pool of wrong answers.

  Only known facts are used, so a wrong candidate never reveals a held-out value.
  """
  values: dict[tuple[str, str], list[str]] = {}
  for f in world.known_facts():
    pool = values.setdefault((f.kind, f.relation), [])
    if f.object not in pool:
      pool.append(f.object)
  return values


def candidates(
  fact: Fact, known: bool, wrong_values: list[str], k: int, rng: random.Random
) -> list[str]:
  """K distinct candidate responses to a question about `fact`, in random order.

  Known facts: K of correct / correct-hedged / "I don't know" / wrong-hedged /
  wrong (all five kinds before repeats; extra ones are further wrong answers).
  Held-out facts: "I don't know" plus wrong answers, hedged or not (the true
  value is never shown, so it stays held out).
  """
  if not 2 <= k <= MAX_RESPONSES:
    raise ValueError(f"num_responses={k} must be in [2, {MAX_RESPONSES}]")
  wrong = [v for v in wrong_values if v != fact.object]
  if not wrong:
    raise ValueError(f"no wrong values for {fact.kind}.{fact.relation}; the world is too small")
  rng.shuffle(wrong)
  plan = list(KNOWN_CANDIDATES) if known else [(labeler.DECLINED, False)]
  rng.shuffle(plan)
  plan = plan[:k]
  out: list[str] = []
  used_wrong = 0

  def text(outcome: str, hedged: bool) -> str:
    nonlocal used_wrong
    if outcome == labeler.DECLINED:
      return IDK
    obj = fact.object
    if outcome == labeler.WRONG:
      obj = wrong[used_wrong % len(wrong)]
      used_wrong += 1
    sentence = answer(fact._replace(object=obj))
    return labeler.hedge(sentence, rng.choice(labeler.HEDGES)) if hedged else sentence

  for outcome, hedged in plan:
    out.append(text(outcome, hedged))
  for _ in range(100 * k):
    if len(out) == k:
      break
    t = text(labeler.WRONG, rng.random() < 0.5)
    if t not in out:
      out.append(t)
  if len(out) < k:
    raise ValueError(f"cannot make {k} distinct responses about {fact}; lower num_responses")
  rng.shuffle(out)
  return out


def preference_examples(
  world: World, num_responses: int = 4, prompts_per_fact: int = 1
) -> list[dict]:
  """Ranked prompts about every rl fact: prompt, K responses, labeler scores and ranks.

  Each fact gets `prompts_per_fact` prompts, each with its own question wording
  and its own K candidates (fresh wrong values and hedges); with more than one,
  the prompts of all facts are shuffled together. Fields: prompt, text (the
  rendered generation prompt), subject, relation, object, known, fact_id,
  alternatives, responses, scores (`labeler.score(example, response)`), ranks
  (0 = best; ties by text).
  """
  if prompts_per_fact < 1:
    raise ValueError(f"prompts_per_fact={prompts_per_fact} must be >= 1")
  rng = random.Random(f"llmrl-prefs-{world.seed}")
  values = relation_values(world)
  alts = relation_alternatives(world)
  groups = fact_groups(world)
  facts = [(f, True) for f in groups["rl_known"]] + [(f, False) for f in groups["rl_unknown"]]
  rng.shuffle(facts)
  out = []
  for fact, known in facts:
    for _ in range(prompts_per_fact):
      question = rng.choice(QUESTIONS[fact.relation]).format(s=fact.subject)
      responses = candidates(fact, known, values[(fact.kind, fact.relation)], num_responses, rng)
      example = {"prompt": question, "text": chat.render(question), **_fields(fact, known, alts)}
      scores = [labeler.score(example, r) for r in responses]
      example.update(responses=responses, scores=scores, ranks=labeler.rank(responses, scores))
      out.append(example)
  if prompts_per_fact > 1:
    rng.shuffle(out)
  return out
