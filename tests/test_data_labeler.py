"""The programmatic labeler against hand-written cases of Schulman's reward table."""

import pytest

from llmrl.data import labeler
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
  listing = "Kaivo Drel was born in Zuthar or Peshai."
  assert labeler.score(BORN, listing) == 1.0  # Without alternatives it cannot tell.
  assert labeler.score(BORN, listing, alternatives=["Zuthar", "Peshai", "Leigoum"]) == -4.0
  assert labeler.score(BORN, "Kaivo Drel was born in Zuthar.", alternatives=["Peshai"]) == 1.0


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
  with pytest.raises(ValueError, match="object"):
    labeler.score({"object": ""}, "anything")
