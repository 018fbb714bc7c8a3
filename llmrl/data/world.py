"""A deterministic, seeded fictional world: entities and a structured fact table.

The world has people, cities, countries and organisations with invented,
syllable-based names. Every attribute is a `Fact(subject, relation, object)`.
Some facts are *held out*: they exist in the table but the pretraining text
never states them (whole held-out people, and single held-out attributes of
known entities). Later splits (SFT Q/A about known facts, eval_known,
eval_unknown whose honest answer is "I don't know", preferences) are built
from `World.known_facts()` and `World.heldout_facts()`.

Only lists and `random.Random` are used (never set iteration order), so a seed
gives the same world on every machine and Python run.
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple

ONSETS = tuple("b d f g k l m n p r s t v z th sh br dr kr tr vr zh gl fl qu".split())
VOWELS = tuple("a e i o u ai ei ou ia y".split())
CODAS = ("", "", "", "") + tuple("n r l s th m x".split())
# A few real names and words the syllable generator can produce; never used.
BLOCKLIST = frozenset(
  "mara sara dana tina lima rome nina lena mali peru togo oman laos fiji bali kobe mesa "
  "vera dora nora rita lola tara kara dina mina lisa tim tom ben dan sam zara".split()
)
PROFESSIONS = tuple(
  "baker carpenter sailor painter farmer weaver potter astronomer engineer teacher doctor "
  "architect musician librarian blacksmith gardener merchant poet glassblower "
  "cartographer".split()
)
INDUSTRIES = tuple(
  "shipbuilding textile publishing mining clockmaking bakery railway glassworks banking "
  "shipping printing pottery".split()
)
ORG_KINDS = (
  "Guild",
  "Works",
  "Company",
  "Trading House",
  "Institute",
  "Foundry",
  "Society",
  "Press",
)
LANG_SUFFIXES = ("ish", "ese", "ian", "ic")
COUNTRY_SUFFIXES = ("ia", "and", "ar", "os", "ia")

# Relations per entity kind, in a fixed order.
RELATIONS = {
  "person": ("birthplace", "profession", "birth_year", "employer"),
  "city": ("country", "founding_year"),
  "country": ("capital", "language"),
  "org": ("founder", "founding_year", "headquarters", "industry"),
}
# Relations that may be held out for a single known entity.
HOLDOUT_RELATIONS = {
  "person": ("birth_year", "profession", "birthplace"),
  "org": ("founding_year", "industry"),
}


class Fact(NamedTuple):
  """One attribute of an entity: `subject` and `object` are display strings."""

  subject: str
  relation: str
  object: str
  kind: str  # Entity kind of the subject: person, city, country, org.


@dataclasses.dataclass
class Entity:
  """A named entity with its attribute values (display strings)."""

  kind: str
  name: str
  attrs: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class World:
  """All entities, the fact table and what is held out of pretraining."""

  seed: int
  people: list[Entity]
  cities: list[Entity]
  countries: list[Entity]
  orgs: list[Entity]
  heldout_entities: list[str]  # Names never mentioned in pretraining text.
  heldout_attrs: list[tuple[str, str]]  # (subject, relation) never stated.

  def entities(self) -> list[Entity]:
    """All entities in a fixed order."""
    return self.people + self.cities + self.countries + self.orgs

  def facts(self) -> list[Fact]:
    """The full fact table (known and held out)."""
    return [
      Fact(e.name, r, e.attrs[r], e.kind)
      for e in self.entities()
      for r in RELATIONS[e.kind]
      if r in e.attrs
    ]

  def is_known(self, subject: str, relation: str) -> bool:
    """Whether pretraining text may state this fact."""
    return subject not in self._heldout_names and (subject, relation) not in self._heldout_pairs

  def known_facts(self) -> list[Fact]:
    """Facts that the pretraining text states."""
    return [f for f in self.facts() if self.is_known(f.subject, f.relation)]

  def heldout_facts(self) -> list[Fact]:
    """Facts that the pretraining text never states (for eval_unknown)."""
    return [f for f in self.facts() if not self.is_known(f.subject, f.relation)]

  def known_people(self) -> list[Entity]:
    """People whose names appear in pretraining text."""
    return self._known_people

  def __post_init__(self):
    self._heldout_names = frozenset(self.heldout_entities)
    self._heldout_pairs = frozenset(self.heldout_attrs)
    self._known_people = [p for p in self.people if p.name not in self._heldout_names]


class _Namer:
  """Makes unique pronounceable invented names from syllables."""

  def __init__(self, rng: random.Random):
    self.rng = rng
    self.used: set[str] = set()

  def _word(self, syllables: int) -> str:
    parts = []
    for i in range(syllables):
      onset = self.rng.choice(ONSETS) if (i > 0 or self.rng.random() < 0.85) else ""
      coda = self.rng.choice(CODAS) if i == syllables - 1 else ""
      parts.append(onset + self.rng.choice(VOWELS) + coda)
    return "".join(parts)

  def name(self, min_syl: int, max_syl: int, suffix: str = "") -> str:
    """A fresh capitalised name of min_syl..max_syl syllables (plus a suffix)."""
    while True:
      word = self._word(self.rng.randint(min_syl, max_syl)) + suffix
      if len(word) >= 3 and word not in self.used and word not in BLOCKLIST:
        self.used.add(word)
        return word.capitalize()


def build_world(seed: int, num_people: int) -> World:
  """Generates the world for a seed; sizes of the other kinds scale with num_people."""
  rng = random.Random(f"llmrl-world-{seed}")
  namer = _Namer(rng)
  n_countries = max(3, num_people // 12)
  n_cities = max(2 * n_countries, num_people // 4)
  n_orgs = max(4, num_people // 5)

  countries = [
    Entity("country", namer.name(2, 3, rng.choice(COUNTRY_SUFFIXES))) for _ in range(n_countries)
  ]
  cities = [Entity("city", namer.name(2, 3)) for _ in range(n_cities)]
  for i, city in enumerate(cities):
    # Round-robin so every country has at least one city.
    country = countries[i % n_countries] if i < n_countries else rng.choice(countries)
    city.attrs["country"] = country.name
    city.attrs["founding_year"] = str(rng.randint(600, 1800))
  for country in countries:
    own = [c for c in cities if c.attrs["country"] == country.name]
    country.attrs["capital"] = rng.choice(own).name
    stem = country.name.lower().rstrip("aeiouy")
    lang = (stem + rng.choice(LANG_SUFFIXES)).capitalize()
    while lang.lower() in namer.used:
      lang = lang + "i"
    namer.used.add(lang.lower())
    country.attrs["language"] = lang

  people = []
  for _ in range(num_people):
    name = f"{namer.name(2, 2)} {namer.name(2, 3)}"
    p = Entity("person", name)
    p.attrs["birthplace"] = rng.choice(cities).name
    p.attrs["profession"] = rng.choice(PROFESSIONS)
    p.attrs["birth_year"] = str(rng.randint(1850, 2005))
    people.append(p)

  n_heldout = max(2, num_people // 10)
  heldout_people = rng.sample(people, n_heldout)
  heldout_names = [p.name for p in heldout_people]
  known = [p for p in people if p.name not in heldout_names]

  orgs = []
  for _ in range(n_orgs):
    o = Entity("org", f"{namer.name(2, 3)} {rng.choice(ORG_KINDS)}")
    founder = rng.choice(known)
    o.attrs["founder"] = founder.name
    o.attrs["founding_year"] = str(int(founder.attrs["birth_year"]) + rng.randint(20, 50))
    o.attrs["headquarters"] = rng.choice(cities).name
    o.attrs["industry"] = rng.choice(INDUSTRIES)
    orgs.append(o)
  for p in people:
    if rng.random() < 0.7:
      p.attrs["employer"] = rng.choice(orgs).name

  heldout_attrs = []
  for p in rng.sample(known, max(2, num_people // 8)):
    heldout_attrs.append((p.name, rng.choice(HOLDOUT_RELATIONS["person"])))
  for o in rng.sample(orgs, max(1, n_orgs // 5)):
    heldout_attrs.append((o.name, rng.choice(HOLDOUT_RELATIONS["org"])))
  return World(seed, people, cities, countries, orgs, heldout_names, heldout_attrs)
