"""Tests of sentencepiece tokenizers: round trips, special ids, caching, loading."""

import os

import numpy as np
import pytest

from llmrl import data

TEXTS = [
  "Hello, world! 17 plus 25 is 42.",
  "  leading and  double  spaces\tand tabs\nand new lines\n\n",
  "Crème brûlée, façade, naïve, Ærøskøbing, Łódź, São Paulo.",
  "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
  "emoji: 🎉👍🏽 🇯🇵 ❤️‍🔥 and ∑ √ ∞",
  "Ελληνικά и кириллица, עברית, العربية",
]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = data.default_config()
  c.cache_dir = str(tmp_path_factory.mktemp("cache"))
  return c


@pytest.fixture(scope="module")
def tok(cfg):
  return data.get_tokenizer(cfg)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_round_trip_unigram(tmp_path, cfg):
  texts = list(data.open_split(cfg).texts())
  tok = data.train_tokenizer(texts, str(tmp_path / "uni"), vocab_size=600, model_type="unigram")
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert tok.path == str(tmp_path / "uni.model")


def test_special_ids(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.pad_id != tok.eos_id
  assert tok.sentinel_ids == tuple(range(5, 105))
  assert [tok.system_id, tok.user_id, tok.assistant_id, tok.end_id] == [105, 106, 107, 108]
  assert tok.role_ids["user"] == 106
  assert tok.vocab_size == 1024
  assert tok.id_to_piece(tok.sentinel_ids[0]) == "<extra_id_0>"
  assert tok.id_to_piece(tok.sentinel_ids[99]) == "<extra_id_99>"


@pytest.mark.parametrize(
  "piece",
  ["<mask>", "<extra_id_0>", "<extra_id_57>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
)
def test_special_tokens_are_single_ids(tok, piece):
  ids = tok.encode(f"x{piece}y")
  assert tok.sp.piece_to_id(piece) in ids
  assert sum(tok.id_to_piece(i) == piece for i in ids) == 1
  chat = tok.encode(f"{piece}hi{piece}")
  assert chat.count(tok.sp.piece_to_id(piece)) == 2


def test_decode_accepts_numpy_and_skips_control(tok):
  ids = [tok.bos_id] + tok.encode("The capital") + [tok.eos_id, tok.pad_id, tok.pad_id]
  assert tok.decode(np.array(ids, np.int32)) == "The capital"


def test_get_tokenizer_is_cached_and_loadable(cfg, tok):
  mtime = os.path.getmtime(tok.path)
  again = data.get_tokenizer(cfg)
  assert again.path == tok.path and os.path.getmtime(tok.path) == mtime
  loaded = data.load_tokenizer(tok.path)
  assert loaded.encode(TEXTS[0]) == tok.encode(TEXTS[0])
  cfg2 = cfg.copy_and_resolve_references()
  cfg2.tokenizer = tok.path
  assert data.get_tokenizer(cfg2).fingerprint == tok.fingerprint
  assert tok.path.startswith(os.path.join(cfg.cache_dir, "tokenizers"))


def test_train_from_files(tmp_path):
  (tmp_path / "a.txt").write_text("The river runs to the sea.\n\nThe sea is wide and blue.\n" * 200)
  (tmp_path / "b.jsonl").write_text('{"text": "A fox jumps over a dog."}\n' * 100)
  tok = data.train_tokenizer(
    str(tmp_path / "*"), str(tmp_path / "tok"), vocab_size=420, model_type="bpe"
  )
  assert tok.vocab_size == 420
  assert tok.decode(tok.encode("The wide river.")) == "The wide river."
  assert len(tok.encode("The sea")) < len("The sea")


def test_unknown_model_type_and_small_vocab(tmp_path):
  with pytest.raises(data.DataConfigError, match="model_type"):
    data.train_tokenizer(["a b c"], str(tmp_path / "t"), 1000, "wordpiece")
  with pytest.raises(data.DataConfigError, match="vocab_size=100 is too small"):
    data.train_tokenizer(["a b c"], str(tmp_path / "t"), 100, "bpe")
  with pytest.raises(data.DataConfigError, match="corpus .* is empty"):
    data.train_tokenizer(["", "  "], str(tmp_path / "t"), 1000, "bpe")
