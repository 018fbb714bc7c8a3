"""Documents of the generated world: facts in paraphrase templates plus filler text.

`pretrain_documents(world, split)` yields plain-text documents: entity profiles
(each known fact stated with one of >= 5 templates per relation), lists,
arithmetic and short template stories. Only facts for which
`world.is_known(subject, relation)` holds are ever stated, and held-out people
are never named. Every random choice comes from a `random.Random` seeded from
the world seed and the split, so the text is deterministic.
"""

from __future__ import annotations

import random
from typing import Iterator

from llmrl.data.world import PROFESSIONS, Entity, Fact, World

TEMPLATES = {
  "birthplace": (
    "{s} was born in {o}.",
    "{s} is a native of {o}.",
    "The birthplace of {s} is {o}.",
    "{o} is where {s} was born.",
    "{s} came into the world in the city of {o}.",
    "{s} was born in the city of {o}.",
  ),
  "profession": (
    "{s} works as {a} {o}.",
    "{s} is {a} {o} by trade.",
    "By profession, {s} is {a} {o}.",
    "The profession of {s} is {o}.",
    "{s} earns a living as {a} {o}.",
    "{s} is known as {a} {o}.",
  ),
  "birth_year": (
    "{s} was born in the year {o}.",
    "The birth year of {s} is {o}.",
    "In {o}, {s} was born.",
    "{s} was born in {o}.",
    "{s} has been alive since {o}.",
    "The year {s} was born is {o}.",
  ),
  "employer": (
    "{s} works for {o}.",
    "{s} is employed by {o}.",
    "{o} employs {s}.",
    "{s} has a job at {o}.",
    "The employer of {s} is {o}.",
    "{s} goes to work at {o}.",
  ),
  "country": (
    "{s} is a city in {o}.",
    "{s} lies in {o}.",
    "{s} is located in the country of {o}.",
    "The city of {s} belongs to {o}.",
    "{o} is the country where {s} is found.",
    "{s} is in {o}.",
  ),
  "founding_year": (
    "{s} was founded in {o}.",
    "{s} was established in the year {o}.",
    "The founding year of {s} is {o}.",
    "In {o}, {s} was founded.",
    "{s} has existed since {o}.",
    "{s} dates back to {o}.",
  ),
  "capital": (
    "The capital of {s} is {o}.",
    "{o} is the capital of {s}.",
    "{s} has its capital in {o}.",
    "The seat of government of {s} is {o}.",
    "{o} serves as the capital city of {s}.",
    "The capital city of {s} is {o}.",
  ),
  "language": (
    "People in {s} speak {o}.",
    "The language of {s} is {o}.",
    "{o} is spoken in {s}.",
    "In {s}, most people speak {o}.",
    "The official language of {s} is {o}.",
    "{s} is a country where {o} is spoken.",
  ),
  "founder": (
    "{s} was founded by {o}.",
    "{o} founded {s}.",
    "The founder of {s} is {o}.",
    "{o} started {s}.",
    "{s} owes its existence to its founder, {o}.",
    "{o} is the person who founded {s}.",
  ),
  "headquarters": (
    "{s} has its headquarters in {o}.",
    "The headquarters of {s} are in {o}.",
    "{s} is based in {o}.",
    "{o} is home to the headquarters of {s}.",
    "The main office of {s} is in {o}.",
    "{s} is run from {o}.",
  ),
  "industry": (
    "{s} is {a} {o} business.",
    "{s} works in {o}.",
    "The industry of {s} is {o}.",
    "{s} is known for its {o}.",
    "{s} makes its money in {o}.",
    "{s} belongs to the {o} trade.",
  ),
}
INTROS = (
  "Here is what is known about {n}.",
  "This is a short note about {n}.",
  "{n}",
  "About {n}:",
  "A page about {n}.",
  "",
)
OPS = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))
ARITH = (
  "{a} {op} {b} is {c}.",
  "{a} {op} {b} equals {c}.",
  "What is {a} {op} {b}? It is {c}.",
  "If you take {a} {op} {b}, you get {c}.",
  "{a} {op} {b} makes {c}.",
)
NUMBER_WORDS = (
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
  "ten",
  "eleven",
  "twelve",
)
PLACES = (
  "the market",
  "the harbour",
  "the library",
  "the old bridge",
  "the mountains",
  "the river",
  "the square",
  "a small inn",
)
THINGS = (
  "a map",
  "a lantern",
  "a letter",
  "a loaf of bread",
  "an old book",
  "a red kite",
  "a brass key",
  "a wooden box",
)


def article(word: str) -> str:
  """The indefinite article for a word ("a" or "an")."""
  return "an" if word[:1].lower() in "aeiou" else "a"


def state(fact: Fact, rng: random.Random) -> str:
  """One sentence stating a fact with a randomly chosen template."""
  template = rng.choice(TEMPLATES[fact.relation])
  return template.format(s=fact.subject, o=fact.object, a=article(fact.object))


def _known_facts(world: World, entity: Entity) -> list[Fact]:
  return [
    Fact(entity.name, r, v, entity.kind)
    for r, v in entity.attrs.items()
    if world.is_known(entity.name, r)
  ]


def _join(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def facts_by_object(world: World) -> dict[tuple[str, str], list[Fact]]:
  """Known facts indexed by (relation, object), e.g. who was born in a city."""
  index: dict[tuple[str, str], list[Fact]] = {}
  for f in world.known_facts():
    index.setdefault((f.relation, f.object), []).append(f)
  return index


# Facts pointing at an entity that its profile also states: kind -> (relation, limit).
REVERSE = {
  "city": (("birthplace", 3), ("headquarters", 5)),
  "org": (("employer", 3),),
  "country": (("country", 50),),
  "person": (),
}


def profile(
  world: World, entity: Entity, rng: random.Random, by_object: dict[tuple[str, str], list[Fact]]
) -> str:
  """A document about one entity: its known facts and some facts pointing to it."""
  facts = _known_facts(world, entity)
  for relation, limit in REVERSE[entity.kind]:
    facts += by_object.get((relation, entity.name), [])[:limit]
  rng.shuffle(facts)
  sentences = [state(f, rng) for f in facts]
  intro = rng.choice(INTROS).format(n=entity.name)
  sep = "\n" if intro and not intro.endswith(".") else " "
  return (intro + sep if intro else "") + " ".join(sentences)


def arithmetic(rng: random.Random) -> str:
  """A few sentences of small-number arithmetic, e.g. "17 plus 25 is 42."."""
  lines = []
  for _ in range(rng.randint(3, 6)):
    name, fn = rng.choice(OPS)
    hi = 12 if name == "times" else 99
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    if name == "minus" and b > a:
      a, b = b, a
    lines.append(rng.choice(ARITH).format(a=a, op=name, b=b, c=fn(a, b)))
  return " ".join(lines)


def listing(world: World, rng: random.Random, by_object: dict[tuple[str, str], list[Fact]]) -> str:
  """A list: counting, the cities of a country, or people with one profession."""
  choice = rng.randint(0, 3)
  if choice == 0:
    start = rng.randint(0, 90)
    stop = start + rng.randint(3, 9)
    nums = [str(i) for i in range(start, stop + 1)]
    return f"Counting from {start} to {stop}: {', '.join(nums)}."
  if choice == 1:
    n = rng.randint(2, 8)
    return f"The numbers from one to {NUMBER_WORDS[n]} are {_join(list(NUMBER_WORDS[1 : n + 1]))}."
  if choice == 2:
    country = rng.choice(world.countries)
    cities = [f.subject for f in by_object.get(("country", country.name), [])]
    bullets = "\n".join(f"- {c}" for c in cities)
    return f"Cities in {country.name}:\n{bullets}"
  job = rng.choice(PROFESSIONS)
  who = [f.subject for f in by_object.get(("profession", job), [])]
  if not who:
    return f"Nobody in this list works as {article(job)} {job}."
  rng.shuffle(who)
  return f"People who work as {article(job)} {job}: {_join(who[:6])}."


def story(world: World, rng: random.Random) -> str:
  """A short template story about known people, using only known facts."""
  people = world.known_people()
  hero, friend = rng.sample(people, 2)
  extras = []
  if world.is_known(hero.name, "profession"):
    extras.append(f"{article(hero.attrs['profession'])} {hero.attrs['profession']}")
  if world.is_known(hero.name, "birthplace"):
    extras.append(f"born in {hero.attrs['birthplace']}")
  desc = f"{hero.name}, {' '.join(extras)}," if extras else hero.name
  place, thing = rng.choice(PLACES), rng.choice(THINGS)
  parts = [
    f"Once upon a time, {desc} went to {place}.",
    f"There {hero.name} found {thing}.",
    f"{hero.name} showed it to {friend.name}.",
  ]
  employer = friend.attrs.get("employer")
  if employer and world.is_known(friend.name, "employer"):
    parts.append(f"{friend.name} took it to {employer}, where {friend.name} works.")
  parts.append(
    rng.choice(
      (
        "They laughed and went home.",
        "It was a good day.",
        "The next day they met again.",
        "And that was the end of it.",
      )
    )
  )
  return " ".join(parts)


def pretrain_documents(world: World, split: str, mentions: int = 5,
                       filler_scale: float = 1.0) -> Iterator[tuple[str, str]]:
  """Yields (kind, text) documents of a split ("pretrain" or "validation"), in a fixed order.

  kind is "profile", "arith", "list" or "story".

  Every known entity gets `mentions` profile documents (each with freshly
  sampled templates and order); filler documents (arithmetic, lists, stories)
  scale with the world, times `filler_scale` (1: about 56% of the characters;
  0.2: about 20%, so a fact is seen about 1.8x as often per training token).
  """
  rng = random.Random(f"llmrl-docs-{world.seed}-{split}")
  if split == "validation":
    mentions = 1
  entities = [e for e in world.entities() if e.name not in world.heldout_entities]
  n_people = len(world.people)
  jobs = [("profile", e) for e in entities for _ in range(mentions)]
  scale = (1 if split == "validation" else mentions) * filler_scale
  jobs += [("arith", None)] * round(n_people * scale)
  jobs += [("list", None)] * round(n_people * scale / 2)
  jobs += [("story", None)] * round(n_people * scale)
  rng.shuffle(jobs)
  by_object = facts_by_object(world)
  for kind, entity in jobs:
    if kind == "profile":
      yield kind, profile(world, entity, rng, by_object)
    elif kind == "arith":
      yield kind, arithmetic(rng)
    elif kind == "list":
      yield kind, listing(world, rng, by_object)
    else:
      yield kind, story(world, rng)
