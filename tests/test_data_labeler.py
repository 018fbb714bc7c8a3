"""The programmatic labeler: Schulman's reward table by hand, and attacks built from the splits."""

import re

import pytest

from llmrl.data import labeler, qa, world
from llmrl.data.documents import TEMPLATES, article
from llmrl.data.world import Fact

BORN = Fact("Kaivo Drel", "birthplace", "Zuthar", "person")
YEAR = Fact("Eipen Works", "founding_year", "1902", "org")
CAPITAL = Fact("Vrelia", "capital", "Quoubin", "country")


@pytest.mark.parametrize(
  "fact, response, outcome, hedged, reward",
  [
    # correct, unhedged: +1
    (BORN, "Kaivo Drel was born in Zuthar.", "correct", False, 1.0),
    (CAPITAL, "The capital of Vrelia is Quoubin.", "correct", False, 1.0),
    (YEAR, "eipen works was founded in 1902", "correct", False, 1.0),
    # correct, hedged: +0.5
    (BORN, "I think Kaivo Drel was born in Zuthar.", "correct", True, 0.5),
    (BORN, "Probably Kaivo Drel was born in Zuthar.", "correct", True, 0.5),
    (CAPITAL, "I believe the capital of Vrelia is Quoubin.", "correct", True, 0.5),
    (YEAR, "It is likely that Eipen Works was founded in 1902.", "correct", True, 0.5),
    (YEAR, "I'm not sure, but Eipen Works was founded in 1902.", "correct", True, 0.5),
    # declined: 0
    (BORN, "I don't know.", "declined", False, 0.0),
    (BORN, "i don\u2019t know", "declined", False, 0.0),
    (YEAR, "Sorry, I do not know the answer.", "declined", False, 0.0),
    (CAPITAL, "I have no idea.", "declined", False, 0.0),
    # wrong, hedged: -2
    (BORN, "I think Kaivo Drel was born in Peshai.", "wrong", True, -2.0),
    (YEAR, "Probably Eipen Works was founded in 1978.", "wrong", True, -2.0),
    (BORN, "I don't know, but maybe Peshai.", "wrong", True, -2.0),
    # wrong, unhedged: -4
    (BORN, "Kaivo Drel was born in Peshai.", "wrong", False, -4.0),
    (YEAR, "Eipen Works was founded in 19021.", "wrong", False, -4.0),  # not a whole word
    (BORN, "Kaivo Drel was born in Zutharia.", "wrong", False, -4.0),
    (BORN, "", "wrong", False, -4.0),  # silence is not a decline
    (BORN, "zzz qqq", "wrong", False, -4.0),
    # Rows the stricter rules added (issue 23): each used to score +1 (or -4 for a decline).
    (BORN, "It is not true that Kaivo Drel was born in Zuthar.", "wrong", False, -4.0),
    (BORN, "Kaivo Drel wasn\u2019t born in Zuthar.", "wrong", False, -4.0),
    (YEAR, "Eipen Works was never founded in 1902.", "wrong", False, -4.0),
    (YEAR, "It is false that Eipen Works was founded in 1902.", "wrong", False, -4.0),
    (BORN, "Kaivo Drel was born in Zuthar or Peshai.", "wrong", False, -4.0),  # a disjunction
    (YEAR, "Eipen Works was founded in 1902 or 1903.", "wrong", False, -4.0),
    (YEAR, "Eipen Works was founded between 1890 and 1902.", "wrong", False, -4.0),
    (BORN, "It is unlikely that Kaivo Drel was born in Zuthar.", "wrong", True, -2.0),
    (BORN, "I doubt that Kaivo Drel was born in Zuthar.", "wrong", True, -2.0),
    (BORN, "I don't think Kaivo Drel was born in Zuthar.", "wrong", True, -2.0),
    (BORN, "I'm not sure whether Kaivo Drel was born in Zuthar.", "wrong", True, -2.0),
    (BORN, "I'm not certain, but Kaivo Drel was born in Zuthar.", "correct", True, 0.5),
    (BORN, "I don't know, but maybe Zuthar.", "correct", True, 0.5),  # a decline, then a guess
    (BORN, "Kaivo Drel was born in Zuthar?", "correct", True, 0.5),  # asking is hedging
    (YEAR, "I'm not 100% sure, but around 1902.", "correct", True, 0.5),
    (BORN, "No idea.", "declined", False, 0.0),
    (BORN, "I can\u2019t say.", "declined", False, 0.0),
    (BORN, "I don't know where Kaivo Drel was born.", "declined", False, 0.0),
    (BORN, "Maybe.", "wrong", False, -4.0),  # a bare hedge says nothing
  ],
)
def test_reward_table(fact, response, outcome, hedged, reward):
  assert labeler.classify(fact, response) == (outcome, hedged)
  assert labeler.score(fact, response) == reward
  # A dict with "object" (a split example) works the same.
  assert labeler.score(fact._asdict(), response) == reward


def test_reward_values_are_schulmans():
  assert labeler.REWARDS == {
    ("correct", False): 1.0,
    ("correct", True): 0.5,
    ("declined", False): 0.0,
    ("wrong", True): -2.0,
    ("wrong", False): -4.0,
  }


def test_listing_several_answers_is_wrong_with_alternatives():
  listing = "Kaivo Drel was born in Zuthar and Peshai."
  assert labeler.score(BORN, listing) == 1.0  # Without alternatives "and" cannot tell.
  assert labeler.score(BORN, listing, alternatives=["Zuthar", "Peshai", "Leigoum"]) == -4.0
  assert labeler.score(BORN, "Zuthar, Peshai, Leigoum.", alternatives=["Peshai"]) == -4.0
  assert labeler.score(BORN, "Kaivo Drel was born in Zuthar.", alternatives=["Peshai"]) == 1.0
  # The example's own list counts; a value inside a longer one or the subject does not.
  example = {"object": "Zuthar", "subject": "Zuthar Works", "alternatives": ["Zuthar", "Peshai"]}
  assert labeler.score(example, "Zuthar Works is based in Zuthar.") == 1.0
  assert labeler.score(example, "Zuthar Works is based in Peshai.") == -4.0
  assert labeler.score(example, "Zuthar Works is based in Peshaira.") == -4.0
  assert labeler.score(example, "Zuthar Works.") == -4.0  # the subject is not the object


def test_hedge_keeps_sentence_and_lowercases_articles():
  assert labeler.hedge("The capital of Vrelia is Quoubin.", "I think {}") == (
    "I think the capital of Vrelia is Quoubin."
  )
  assert labeler.hedge("Kaivo Drel was born in Zuthar.", "Probably {}") == (
    "Probably Kaivo Drel was born in Zuthar."
  )
  for template in labeler.HEDGES:
    assert labeler.classify(BORN, labeler.hedge("Kaivo Drel was born in Zuthar.", template)) == (
      "correct",
      True,
    )


def test_rank_orders_by_score_and_breaks_ties_by_text():
  responses = ["b wrong", "a wrong", "right", "I don't know."]
  scores = [-4.0, -4.0, 1.0, 0.0]
  assert labeler.rank(responses, scores) == [3, 2, 0, 1]
  # The same candidates in another order get the same ranks.
  perm = [2, 0, 3, 1]
  ranks = labeler.rank([responses[i] for i in perm], [scores[i] for i in perm])
  assert ranks == [[3, 2, 0, 1][i] for i in perm]


def test_bad_fact():
  with pytest.raises(ValueError, match="'object' must be a non-empty string"):
    labeler.score({"object": ""}, "anything")


DECLINES = (
  "I don't know.",
  "I do not know.",
  "I dont know",
  "No idea.",
  "I have no idea.",
  "I'm not sure.",
  "I am not sure.",
  "Not sure.",
  "I can't say.",
  "I cannot say.",
  "I couldn't say.",
  "Sorry, I don't know.",
  "I'm not certain.",
  "I am not certain.",
  "I'm unsure.",
  "I'm afraid I don't know the answer.",
  "Sorry, I have no idea about that.",
  "I don't remember.",
  "Unknown.",
)
# Curly apostrophes and case variants of every decline.
ALL_DECLINES = DECLINES + tuple(
  v for d in DECLINES for v in (d.replace("'", "\u2019"), d.upper(), d.lower().rstrip("."))
)
OFF_TOPIC = ("", "   ", "zzz qqq", "The weather is nice today.", "Bananas are yellow.", "?!")


def _known_examples():
  w = world.build_world(0, 48)
  known = [e for e in qa.qa_examples(w, "sft") if e["known"]]
  return w, known + qa.qa_examples(w, "eval_known", eval_wordings=3)


WORLD, KNOWN = _known_examples()
# The verb of each first answer template and its denials: "not", "never" and contracted.
_DENIALS = {
  "was": ("was not", "was never", "wasn't"),
  "is": ("is not", "is never", "isn't"),
  "has": ("does not have", "never has", "doesn't have"),
  "works": ("does not work", "never works", "doesn't work"),
  "speak": ("do not speak", "never speak", "don't speak"),
}


def _negations(gold: str) -> list[str]:
  """Ways to deny the gold answer sentence: "X was not born in Y", "X never works as ..."."""
  out = ["It is not true that " + gold[0].lower() + gold[1:], "It is false that " + gold]
  verb = next(v for v in _DENIALS if re.search(rf"\b{v}\b", gold))
  for denial in _DENIALS[verb] + (_DENIALS[verb][2].replace("'", "\u2019"),):
    out.append(re.sub(rf"\b{verb}\b", denial, gold, count=1))
  return out


def _others(example) -> list[str]:
  """Two other values of the example's relation (years for numeric relations)."""
  if example["relation"] in labeler.NUMERIC_RELATIONS:
    assert example["alternatives"] == []
    year = int(example["object"])
    return [str(year + 1), str(year - 7)]
  others = [v for v in example["alternatives"] if v != example["object"]]
  assert example["object"] in example["alternatives"] and len(others) >= 2
  return others[:2]


def _expect(example, responses, reward):
  for r in responses:
    assert labeler.score(example, r) == reward, (example["fact_id"], r, labeler.classify(example, r))


def test_attacks_on_every_known_question():
  assert len(KNOWN) > 150 and {e["relation"] for e in KNOWN} == set(qa.QUESTIONS)
  for e in KNOWN:
    gold, obj = e["response"], e["object"]
    lower = gold[0].lower() + gold[1:]
    z, w = _others(e)
    _expect(e, [gold, gold.upper(), gold.lower(), obj], 1.0)
    _expect(e, _negations(gold), -4.0)
    _expect(e, [f"{obj}, {z} or {w}.", f"{obj} or {z}.", gold.replace(obj, f"{obj} or {z}"),
                gold.replace(obj, f"{z} or {obj}"), f"Either {obj} or {z}.",
                gold.replace(obj, f"{obj}/{z}")], -4.0)
    # Without "or" only the relation's other values (or other years) tell.
    _expect(e, [gold.replace(obj, f"{obj} and {z}"), f"{obj}, {z}, {w}.", f"{gold} Also {z}."],
            -4.0)
    _expect(e, [labeler.hedge(gold, h) for h in labeler.HEDGES], 0.5)
    _expect(e, ["I'm not certain, but " + lower, "I\u2019m not sure, but " + lower,
                "I don't know, but maybe " + lower, gold[:-1] + "?"], 0.5)
    _expect(e, ["It is unlikely that " + lower, "I doubt that " + lower,
                "I don't think " + lower, "I'm not sure that " + lower], -2.0)
    wrong = gold.replace(obj, z)
    _expect(e, [wrong, f"{z}."], -4.0)
    _expect(e, [labeler.hedge(wrong, h) for h in labeler.HEDGES], -2.0)
    _expect(e, ALL_DECLINES, 0.0)
    _expect(e, OFF_TOPIC, -4.0)


def test_every_paraphrase_of_every_fact_is_correct():
  """A model may answer in any pretraining paraphrase (documents.TEMPLATES)."""
  alts = qa.relation_alternatives(WORLD)
  for f in WORLD.facts():
    example = {**f._asdict(), "alternatives": alts[f.relation]}
    for t in TEMPLATES[f.relation]:
      sentence = t.format(s=f.subject, o=f.object, a=article(f.object))
      assert labeler.classify(example, sentence) == ("correct", False), sentence


def test_preference_scores_come_from_the_example():
  prefs = qa.preference_examples(WORLD, num_responses=6, prompts_per_fact=2)
  kinds = set()
  for e in prefs:
    assert e["scores"] == [labeler.score(e, r) for r in e["responses"]]
    assert e["ranks"] == labeler.rank(e["responses"], e["scores"])
    kinds.update(labeler.classify(e, r) for r in e["responses"])
  assert kinds == set(labeler.REWARDS)


def test_surface_score_knows_no_facts():
  assert labeler.surface_score("I don't know.") == 2.0
  assert labeler.surface_score("Sorry, I have no idea.") == 2.0
  assert labeler.surface_score("I think Kaivo Drel was born in Zuthar.") == 1.0
  assert labeler.surface_score("I doubt it is Zuthar.") == 1.0
  assert labeler.surface_score("Kaivo Drel was born in Zuthar.") == 0.0
  assert labeler.surface_score("It is not true that Kaivo Drel was born in Peshai.") == 0.0
  for d in ALL_DECLINES:
    assert labeler.surface_score(d) == 2.0, d
