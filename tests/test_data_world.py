"""Tests of the generated world: determinism, held-out facts, templates, TFDS preparation."""

import re
import time

import pytest

from llmrl import data
from llmrl.data import builders, documents, world


def _docs(seed, n=48, split="pretrain"):
  return [t for _, t in documents.pretrain_documents(world.build_world(seed, n), split)]


def test_same_seed_same_text_different_seed_different():
  assert _docs(0) == _docs(0)
  assert _docs(0) != _docs(1)
  assert world.build_world(3, 48).facts() == world.build_world(3, 48).facts()
  assert world.build_world(3, 48).facts() != world.build_world(4, 48).facts()


def test_names_are_invented_unique_and_pronounceable():
  w = world.build_world(0, 400)
  names = [e.name for e in w.entities()]
  assert len(names) == len(set(names))
  for name in names:
    for part in name.split():
      assert re.fullmatch(r"[A-Z][a-z]+", part), name
      assert part.lower() not in world.BLOCKLIST
  for p in w.people:
    assert len(p.name.split()) == 2


def test_at_least_five_templates_per_relation():
  relations = {r for rs in world.RELATIONS.values() for r in rs}
  for r in relations:
    assert len(set(documents.TEMPLATES[r])) >= 5, r


def test_world_scales_with_size():
  small, big = world.build_world(0, 48), world.build_world(0, 400)
  assert len(big.facts()) > 5 * len(small.facts())
  assert sum(map(len, _docs(0, 400))) > 5 * sum(map(len, _docs(0, 48)))


def _sentences(docs):
  return [s for d in docs for s in re.split(r"(?<=[.?:])\s+|\n", d) if s]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("split", ["pretrain", "validation"])
def test_heldout_facts_never_appear(seed, split):
  w = world.build_world(seed, 120)
  docs = _docs(seed, 120, split)
  text = "\n".join(docs)
  assert w.heldout_entities and w.heldout_attrs
  for name in w.heldout_entities:
    assert name not in text
  sentences = _sentences(docs)
  checked = 0
  for fact in w.heldout_facts():
    if fact.subject in w.heldout_entities:
      continue
    for s in sentences:
      if fact.subject in s:
        assert not re.search(rf"\b{re.escape(fact.object)}\b", s), (fact, s)
        checked += 1
  assert checked > 0  # Held-out attributes belong to entities that are mentioned.
  # Every known fact is stated somewhere (as a sentence with subject and object).
  stated = 0
  for fact in w.known_facts():
    stated += any(fact.subject in s and fact.object in s for s in sentences)
  assert stated == len(w.known_facts()) or split == "validation"


def test_pretrain_mixes_facts_arithmetic_lists_stories():
  kinds = [k for k, _ in documents.pretrain_documents(world.build_world(0, 48), "pretrain")]
  assert {"profile", "arith", "list", "story"} == set(kinds)
  docs = _docs(0)
  assert any(re.search(r"\d+ plus \d+ (is|equals|makes) \d+", d) for d in docs)


def test_arithmetic_is_correct():
  ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
  n = 0
  for d in _docs(0):
    for a, op, b, c in re.findall(r"(\d+) (plus|minus|times) (\d+)\D+?(\d+)\.", d):
      assert ops[op](int(a), int(b)) == int(c), d
      n += 1
  assert n > 50


def test_tfds_builder_tiny_prepares_fast_and_matches_generator(tmp_path):
  cfg = data.default_config()
  cfg.cache_dir = str(tmp_path)
  start = time.time()
  source = data.open_split(cfg)
  assert time.time() - start < 5.0
  assert sorted(source.texts()) == sorted(_docs(0))
  assert (tmp_path / "tfds" / "synthetic_world").is_dir()
  files = [p.name for p in (tmp_path / "tfds").rglob("*array_record*")]
  assert files, "dataset must be stored as array_record"
  validation = data.open_split(cfg, "validation")
  assert 0 < len(validation) < len(source)
  # A second open reuses the prepared data.
  assert builders.prepare(cfg).is_prepared()


def test_qa_groups_are_disjoint_and_honest():
  from llmrl.data import qa

  w = world.build_world(0, 120)
  groups = qa.fact_groups(w)
  sets = {k: set(v) for k, v in groups.items()}
  assert all(sets.values())
  names = list(sets)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not sets[a] & sets[b], (a, b)
  known = sets["sft_known"] | sets["rl_known"] | sets["eval_known"]
  assert known == set(w.known_facts())
  assert sets["sft_unknown"] | sets["rl_unknown"] | sets["eval_unknown"] == set(w.heldout_facts())
  # Half the known facts are drilled by SFT; the rest is shared by rl and eval.
  assert len(sets["sft_known"]) == len(known) // 2
  assert abs(len(sets["rl_known"]) - len(sets["eval_known"])) <= 1
  prefs = qa.preference_examples(w)
  assert {(e["subject"], e["relation"]) for e in prefs} == {
      (f.subject, f.relation) for f in sets["rl_known"] | sets["rl_unknown"]}
  for ex in qa.qa_examples(w, "eval_unknown"):
    assert ex["response"] == qa.IDK and not ex["known"]
  for ex in qa.qa_examples(w, "eval_known"):
    assert ex["object"] in ex["response"] and ex["subject"] in ex["prompt"]
  sft = qa.qa_examples(w, "sft")
  assert {ex["known"] for ex in sft} == {True, False}
  assert qa.qa_examples(w, "sft") == sft
  # A held-out entity's facts are all in one group: eval_unknown asks about
  # people SFT and the reward model never saw declined.
  subjects = {g: {f.subject for f in sets[g]} for g in ("sft_unknown", "rl_unknown",
                                                          "eval_unknown")}
  for name in w.heldout_entities:
    assert sum(name in s for s in subjects.values()) == 1, name
  assert any(f.subject in w.heldout_entities for f in sets["eval_unknown"])
  assert any(f.subject not in w.heldout_entities for f in sets["eval_unknown"])
