"""The structured synthetic_world splits: sft, preferences, eval_known, eval_unknown, chat."""

import re

import numpy as np
import pytest

from llmrl import data
from llmrl.data import chat, labeler, qa, world

QA_KEYS = {"prompt", "response", "text", "subject", "relation", "object", "known", "fact_id",
           "alternatives"}
PREF_KEYS = QA_KEYS - {"response"} | {"responses", "scores", "ranks"}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = data.default_config()
  c.cache_dir = str(tmp_path_factory.mktemp("cache"))
  return c


@pytest.fixture(scope="module")
def splits(cfg):
  return {s: data.examples(cfg, s) for s in data.STRUCTURED_SPLITS}


@pytest.fixture(scope="module")
def tok(cfg):
  return data.get_tokenizer(cfg)


@pytest.fixture(scope="module")
def the_world(cfg):
  return world.build_world(cfg.world_seed, 48)


def _facts(examples):
  return {(e["subject"], e["relation"]) for e in examples}


def _mentions(text, value):
  return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def test_split_sizes_and_fields(splits):
  sizes = {s: len(v) for s, v in splits.items()}
  assert sizes == {"sft": 121, "preferences": 57, "eval_known": 56, "eval_unknown": 10}
  for s in ("sft", "eval_known", "eval_unknown"):
    assert all(set(e) == QA_KEYS for e in splits[s])
  assert all(set(e) == PREF_KEYS for e in splits["preferences"])
  for e in [e for v in splits.values() for e in v]:
    assert e["fact_id"] == f"{e['subject']}|{e['relation']}"


def test_alternatives_single_out_nothing(splits, the_world):
  """Every question about a relation carries the same list: all its values, true ones included."""
  by_relation: dict = {}
  for e in [e for v in splits.values() for e in v]:
    by_relation.setdefault(e["relation"], []).append(e)
  facts = the_world.facts()
  for relation, examples in by_relation.items():
    lists = {tuple(e["alternatives"]) for e in examples}
    assert len(lists) == 1, relation
    alts = list(lists.pop())
    if relation in labeler.NUMERIC_RELATIONS:
      assert alts == []  # the labeler counts any other year
      continue
    assert alts == sorted(set(alts))
    assert {f.object for f in facts if f.relation == relation} <= set(alts)
    assert all(e["object"] in alts for e in examples)


def test_sft_teaches_answers_and_some_declines(splits, the_world):
  sft = splits["sft"]
  unknown = [e for e in sft if not e["known"]]
  assert 0.05 < len(unknown) / len(sft) < 0.2  # A modest fraction of "I don't know".
  for e in sft:
    assert e["subject"] in e["prompt"] and e["prompt"].endswith("?")
    assert e["text"] == chat.render(e["prompt"], e["response"])
    assert the_world.is_known(e["subject"], e["relation"]) == e["known"]
    if e["known"]:
      fact = world.Fact(e["subject"], e["relation"], e["object"], "")
      assert e["response"] == qa.answer(fact)
      assert labeler.score(e, e["response"]) == 1.0
    else:
      assert e["response"] == labeler.IDK
      assert labeler.score(e, e["response"]) == 0.0


def test_eval_splits(splits, the_world):
  for e in splits["eval_known"]:
    assert e["known"] and the_world.is_known(e["subject"], e["relation"])
    assert labeler.score(e, e["response"]) == 1.0
  for e in splits["eval_unknown"]:
    assert not e["known"] and not the_world.is_known(e["subject"], e["relation"])
    assert e["response"] == labeler.IDK and e["object"]
  kinds = {e["subject"] in the_world.heldout_entities for e in splits["eval_unknown"]}
  assert kinds == {True, False}  # Unknown entities and unknown attributes of known ones.


def test_splits_are_disjoint(splits):
  sft, prefs = splits["sft"], splits["preferences"]
  ek, eu = splits["eval_known"], splits["eval_unknown"]
  train = _facts(sft) | _facts(prefs)
  assert not train & _facts(ek) and not train & _facts(eu) and not _facts(ek) & _facts(eu)
  # Preferences (and so PPO prompts) ask about facts SFT never drilled.
  assert prefs and not _facts(prefs) & _facts(sft)
  train_prompts = {e["prompt"] for e in sft + prefs}
  for e in ek + eu:
    assert e["prompt"] not in train_prompts
    assert e["text"] not in {x["text"] for x in sft}


def _sentences(texts):
  return [s for t in texts for s in re.split(r"(?<=[.?:])\s+|\n", t) if s]


def _assert_never_stated(cfg, splits, eval_unknown):
  """No pretraining sentence, sft answer or preference candidate states an eval_unknown fact."""
  the_world = world.build_world(cfg.world_seed, 48)
  pretrain = list(data.open_split(cfg, "pretrain").texts())
  joined = "\n".join(pretrain)
  sentences = _sentences(pretrain)
  answers = [e["response"] for e in splits["sft"]]
  answers += [r for e in splits["preferences"] for r in e["responses"]]
  for e in eval_unknown:
    subject, obj = e["subject"], e["object"]
    if subject in the_world.heldout_entities:
      assert subject not in joined
    for s in sentences + answers:
      assert not (subject in s and _mentions(s, obj)), (e, s)


def test_eval_unknown_facts_never_stated(cfg, splits, the_world):
  _assert_never_stated(cfg, splits, splits["eval_unknown"])
  # Held-out values of sft's unknown questions are never shown either.
  for e in splits["preferences"]:
    if not e["known"]:
      assert not any(_mentions(r, e["object"]) for r in e["responses"])


def test_preferences_are_scored_and_ranked(splits):
  prefs = splits["preferences"]
  seen = set()
  for e in prefs:
    responses, scores, ranks = e["responses"], e["scores"], e["ranks"]
    assert len(responses) == len(set(responses)) == 4
    assert scores == [labeler.score(e, r) for r in responses]
    assert sorted(ranks) == [0, 1, 2, 3]
    assert ranks == labeler.rank(responses, scores)
    for i in range(4):
      for j in range(4):
        if scores[i] > scores[j]:
          assert ranks[i] < ranks[j]
    assert e["text"] == chat.render(e["prompt"])
    if not e["known"]:
      assert labeler.IDK in responses and max(scores) == 0.0
    seen.update(scores)
    hedged = [r for r in responses if labeler.classify(e, r).hedged]
    for r in hedged:
      assert r.startswith(tuple(h.split("{")[0] for h in labeler.HEDGES))
  assert seen == {1.0, 0.5, 0.0, -2.0, -4.0}
  assert any(len(set(e["scores"])) < 4 for e in prefs)  # Ties occur (unknown prompts).


def test_chat_template_role_markers_are_single_ids(splits, tok):
  e = splits["sft"][0]
  text = e["text"]
  for marker in ("<|system|>", "<|user|>", "<|assistant|>"):
    assert text.count(marker) == 1
  assert text.count("<|end|>") == 3
  ids = tok.encode(text)
  for role in ("system", "user", "assistant"):
    assert ids.count(tok.role_ids[role]) == 1
  assert ids.count(tok.end_id) == 3
  enc = chat.encode(tok, e["prompt"], e["response"])
  assert enc.ids[0] == tok.bos_id and enc.ids[-1] == tok.end_id
  assert tok.decode(enc.ids) == text
  for role in ("system", "user", "assistant"):
    assert (enc.ids == tok.role_ids[role]).sum() == 1
  # Loss only on the response and its <|end|>; the prompt is a prefix.
  prompt = chat.encode(tok, e["prompt"])
  n = len(prompt.ids)
  assert prompt.ids[-1] == tok.assistant_id and not prompt.loss_mask.any()
  np.testing.assert_array_equal(enc.ids[:n], prompt.ids)
  assert not enc.loss_mask[:n].any() and enc.loss_mask[n:].all()
  assert tok.decode(enc.ids[n:]) == e["response"] + "<|end|>"
  assert tok.decode(prompt.ids) == chat.render(e["prompt"])


def test_chat_without_system_and_multi_turn(tok):
  turns = [
    chat.Message("user", "Hi?"),
    chat.Message("assistant", "Hello."),
    chat.Message("user", "Who?"),
    chat.Message("assistant", "Me."),
  ]
  enc = chat.encode_messages(tok, turns)
  assert tok.decode(enc.ids) == chat.render_messages(turns)
  assert int((enc.ids == tok.end_id).sum()) == 4
  assert tok.decode(enc.ids[enc.loss_mask]) == "Hello.<|end|> Me.<|end|>"
  assert chat.render("Q?", "A.", system=None) == "<|user|> Q?<|end|><|assistant|> A.<|end|>"
  with pytest.raises(ValueError, match="role"):
    chat.render_messages([chat.Message("robot", "x")])


def test_sft_chats_fit_the_tiny_sequence_length(splits, tok):
  lens = [len(chat.encode(tok, e["prompt"], e["response"]).ids) for e in splits["sft"]]
  assert max(lens) <= 64


def test_structured_splits_are_deterministic(cfg, splits, tmp_path):
  other = cfg.copy_and_resolve_references()
  other.cache_dir = str(tmp_path)
  for s in data.STRUCTURED_SPLITS:
    assert data.examples(other, s) == splits[s]
  w = world.build_world(1, 48)
  assert qa.preference_examples(w) == qa.preference_examples(world.build_world(1, 48))
  assert qa.qa_examples(w, "sft") != qa.qa_examples(world.build_world(2, 48), "sft")


def test_num_responses_keeps_the_text_and_tokenizer(cfg, splits, tok):
  k3 = cfg.copy_and_resolve_references()
  k3.num_responses = 3
  prefs = data.examples(k3, "preferences")
  assert [len(e["responses"]) for e in prefs] == [3] * len(splits["preferences"])
  assert data.open_split(k3).key == data.open_split(cfg).key
  assert data.get_tokenizer(k3).path == tok.path
  assert data.examples(k3, "sft") == splits["sft"]


def test_prompts_per_fact_words_each_prompt_anew(cfg, splits, tok):
  q3 = cfg.copy_and_resolve_references()
  q3.prompts_per_fact = 3
  prefs = data.examples(q3, "preferences")
  one = splits["preferences"]
  assert len(prefs) == 3 * len(one)
  by_fact: dict = {}
  for e in prefs:
    by_fact.setdefault((e["subject"], e["relation"]), []).append(e)
  assert set(by_fact) == _facts(one) and all(len(v) == 3 for v in by_fact.values())
  for group in by_fact.values():  # each prompt draws its own candidate set
    assert len({tuple(e["responses"]) for e in group}) > 1 or not group[0]["known"]
    assert all(e["scores"] == [labeler.score(e, r) for r in e["responses"]] for e in group)
  assert len({e["prompt"] for e in prefs}) > len(one)  # more than one wording per fact
  facts = [(e["subject"], e["relation"]) for e in prefs[:30]]
  assert len(set(facts)) > 20  # shuffled: a fact's prompts are not side by side
  assert data.get_tokenizer(q3).path == tok.path and data.examples(q3, "sft") == splits["sft"]
  bad = cfg.copy_and_resolve_references()
  bad.prompts_per_fact = 0
  with pytest.raises(data.DataConfigError, match=r"config.data.prompts_per_fact=0 .*\[1, 8\]"):
    data.examples(bad, "preferences")


def test_eval_wordings_ask_each_eval_fact_several_ways(cfg, splits, tok, the_world):
  w3 = cfg.copy_and_resolve_references()
  w3.eval_wordings = 3
  ev = {s: data.examples(w3, s) for s in ("eval_known", "eval_unknown")}
  for s, examples in ev.items():
    one = splits[s]
    assert len(examples) == 3 * len(one) and _facts(examples) == _facts(one)
    by_fact: dict = {}
    for e in examples:
      by_fact.setdefault(e["fact_id"], []).append(e)
    assert all(len({e["prompt"] for e in g}) == 3 for g in by_fact.values())
    # Stored as generated (in TFDS' order); a fact's first wording is the one
    # eval_wordings=1 asks.
    direct = qa.qa_examples(the_world, s, eval_wordings=3)
    key = lambda e: (e["fact_id"], e["prompt"])  # noqa: E731
    assert sorted(examples, key=key) == sorted(direct, key=key)
    assert direct[::3] == qa.qa_examples(the_world, s)
  # Still never trained on: no sft, preference or pretraining text states them.
  train = _facts(splits["sft"]) | _facts(splits["preferences"])
  assert not train & (_facts(ev["eval_known"]) | _facts(ev["eval_unknown"]))
  train_prompts = {e["prompt"] for e in splits["sft"] + splits["preferences"]}
  assert not train_prompts & {e["prompt"] for v in ev.values() for e in v}
  _assert_never_stated(cfg, splits, ev["eval_unknown"])
  for e in ev["eval_known"]:
    assert labeler.score(e, e["response"]) == 1.0
  # Only the eval splits change: the text, tokenizer and training splits are shared.
  assert data.open_split(w3).key == data.open_split(cfg).key
  assert data.get_tokenizer(w3).path == tok.path
  assert data.examples(w3, "sft") == splits["sft"]
  assert data.examples(w3, "preferences") == splits["preferences"]
  for bad in (0, 4):
    c = cfg.copy_and_resolve_references()
    c.eval_wordings = bad
    with pytest.raises(data.DataConfigError, match=r"config.data.eval_wordings=.* \[1, 3\]"):
      data.examples(c, "eval_known")


def test_structured_splits_as_lm_text(cfg, tok):
  it = data.lm_batches(cfg, tok, batch_size=2, seq_len=32, split="sft", seed=0)
  b = next(it)
  assert tok.user_id in b["inputs"] or tok.assistant_id in b["inputs"]


def test_errors(cfg, tmp_path):
  with pytest.raises(data.DataConfigError, match="is not a split of synthetic_world"):
    data.examples(cfg, "train")
  bad = cfg.copy_and_resolve_references()
  bad.num_responses = 1
  with pytest.raises(data.DataConfigError, match=r"config.data.num_responses=1 .*\[2, 8\]"):
    data.examples(bad, "preferences")
  (tmp_path / "a.txt").write_text("some text\n")
  files = cfg.copy_and_resolve_references()
  files.name, files.files = "text_files", str(tmp_path / "a.txt")
  with pytest.raises(data.DataConfigError, match="need config.data.name='synthetic_world'"):
    data.examples(files, "sft")
