"""Tests of the text_files builder: .txt paragraphs, .jsonl lines, splits, pipeline."""

import json

import numpy as np
import pytest

from llmrl import data

POEM = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"


@pytest.fixture()
def corpus(tmp_path):
  d = tmp_path / "corpus"
  d.mkdir()
  paragraphs = [f"Paragraph {i} says the river {i} flows north." for i in range(60)]
  (d / "a.txt").write_text("\n\n".join(paragraphs) + "\n\n" + POEM + "\n")
  with open(d / "b.jsonl", "w") as f:
    for i in range(40):
      f.write(json.dumps({"body": f"Line {i}: café naïve 🎉.", "id": i}) + "\n")
    f.write("\n")  # Blank lines are ignored.
  cfg = data.default_config()
  cfg.name = "text_files"
  cfg.files = str(d / "*")
  cfg.text_key = "body"
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.vocab_size = 420
  cfg.validation_fraction = 0.1
  return cfg


def test_documents_and_splits(corpus):
  data.validate_config(corpus)
  train = list(data.open_split(corpus).texts())
  validation = list(data.open_split(corpus, "validation").texts())
  assert len(train) + len(validation) == 60 + 1 + 40
  assert 0 < len(validation) < 30
  assert not set(train) & set(validation)
  assert POEM in train + validation
  assert "Line 3: café naïve 🎉." in train + validation
  # "pretrain" is an alias of "train" for text files.
  assert sorted(train) == sorted(data.open_split(corpus, "train").texts())


def test_pipeline_on_text_files(corpus):
  tok = data.get_tokenizer(corpus)
  assert tok.decode(tok.encode(POEM)) == POEM
  it = data.lm_batches(corpus, tok, batch_size=2, seq_len=64, seed=0)
  toks = data.tokenized(corpus, tok)
  seen = []
  for _ in range(-(-it.rows_per_epoch // 2)):
    b = next(it)
    seen.append(b["inputs"][b["segment_ids"] > 0])
  assert np.concatenate(seen)[: toks.num_tokens].size == toks.num_tokens
  texts = {tok.decode(toks.doc(d)) for d in range(toks.num_docs)}
  assert texts == set(data.open_split(corpus).texts())


def test_directory_and_comma_globs(corpus, tmp_path):
  folder = corpus.copy_and_resolve_references()
  folder.files = str(tmp_path / "corpus")
  single = corpus.copy_and_resolve_references()
  single.files = f"{tmp_path / 'corpus' / 'a.txt'}, {tmp_path / 'corpus' / 'b.jsonl'}"
  a = sorted(data.open_split(folder).texts())
  assert a == sorted(data.open_split(single).texts())
  assert a == sorted(data.open_split(corpus).texts())


def test_changed_files_are_prepared_again(corpus, tmp_path):
  before = len(data.open_split(corpus)) + len(data.open_split(corpus, "validation"))
  with open(tmp_path / "corpus" / "a.txt", "a") as f:
    f.write("\nA brand new paragraph.\n")
  after = len(data.open_split(corpus)) + len(data.open_split(corpus, "validation"))
  assert after == before + 1
