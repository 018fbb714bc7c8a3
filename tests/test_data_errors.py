"""Every bad input gets a one-line DataConfigError naming the thing and the fix."""

import os

import pytest

from llmrl import data
from llmrl.data import builders, documents


def _files_cfg(tmp_path, files):
  cfg = data.default_config()
  cfg.name = "text_files"
  cfg.files = files
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.vocab_size = 420
  return cfg


def _raises(fn, *patterns):
  with pytest.raises(data.DataConfigError) as info:
    fn()
  msg = str(info.value)
  assert "\n" not in msg, msg
  for p in patterns:
    assert p in msg, msg
  return msg


def _no_complete_dataset(cache_dir):
  root = os.path.join(cache_dir, "tfds")
  if not os.path.isdir(root):
    return True
  for _, _, files in os.walk(root):
    if "dataset_info.json" in files:
      return False
  return True


def test_missing_file(tmp_path):
  cfg = _files_cfg(tmp_path, str(tmp_path / "nope.txt"))
  _raises(lambda: data.validate_config(cfg), "nope.txt", "does not exist", "config.data.files")


def test_empty_file(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  cfg = _files_cfg(tmp_path, str(tmp_path / "empty.txt"))
  _raises(lambda: data.validate_config(cfg), "empty.txt", "is empty")


def test_blank_only_file(tmp_path):
  (tmp_path / "blank.txt").write_text("\n\n   \n")
  cfg = _files_cfg(tmp_path, str(tmp_path / "blank.txt"))
  _raises(lambda: data.open_split(cfg), "blank.txt", "no text found")
  assert _no_complete_dataset(cfg.cache_dir)


def test_glob_and_directory_without_matches(tmp_path):
  cfg = _files_cfg(tmp_path, str(tmp_path / "*.txt"))
  _raises(lambda: data.validate_config(cfg), "matches no files")
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "x.csv").write_text("a,b")
  cfg = _files_cfg(tmp_path, str(tmp_path / "d"))
  _raises(lambda: data.validate_config(cfg), "has no .txt or .jsonl files")
  cfg = _files_cfg(tmp_path, "")
  _raises(lambda: data.validate_config(cfg), "config.data.files is empty")


def test_non_utf8_names_file_and_offset(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"good line\n\nfine text\nbad \xff\xfe byte here\n\nmore good text\n")
  cfg = _files_cfg(tmp_path, str(path))
  data.validate_config(cfg)
  _raises(lambda: data.open_split(cfg), "bad.txt", "byte offset 25", "line 4", "skip_bad_utf8=True")
  assert _no_complete_dataset(cfg.cache_dir)


def test_skip_bad_utf8_skips_lines_and_reports(tmp_path, capsys):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"good line\n\nfine text\nbad \xff byte\n\nmore\xc3 bad\n\nlast good\n")
  cfg = _files_cfg(tmp_path, str(path))
  cfg.skip_bad_utf8 = True
  cfg.validation_fraction = 0.0
  texts = sorted(data.open_split(cfg).texts())
  assert texts == ["fine text", "good line", "last good"]
  assert "skipped 2 lines with invalid UTF-8" in capsys.readouterr().out


def test_bad_jsonl(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{not json}\n')
  _raises(
    lambda: data.open_split(_files_cfg(tmp_path, str(tmp_path / "a.jsonl"))),
    "a.jsonl line 2",
    "not valid JSON",
  )
  (tmp_path / "b.jsonl").write_text('{"content": "ok"}\n')
  _raises(
    lambda: data.open_split(_files_cfg(tmp_path, str(tmp_path / "b.jsonl"))),
    "b.jsonl line 1",
    "config.data.text_key",
  )


def test_vocab_larger_than_corpus(tmp_path):
  (tmp_path / "a.txt").write_text("a small corpus with few words.\n\nanother small line.\n")
  cfg = _files_cfg(tmp_path, str(tmp_path / "a.txt"))
  cfg.vocab_size = 5000
  _raises(
    lambda: data.get_tokenizer(cfg),
    "vocab_size=5000",
    "larger than this corpus supports",
    "set config.data.vocab_size <=",
  )
  folder = os.path.join(cfg.cache_dir, "tokenizers")
  assert not os.path.isdir(folder) or not os.listdir(folder)


def test_vocab_too_small_and_bad_type(tmp_path):
  cfg = data.default_config()
  cfg.vocab_size = 50
  _raises(lambda: data.validate_config(cfg), "config.data.vocab_size=50", ">= 400")
  cfg = data.default_config()
  cfg.tokenizer_type = "wordpiece"
  _raises(lambda: data.validate_config(cfg), "config.data.tokenizer_type")


def test_tokenizer_path_missing_or_broken(tmp_path):
  cfg = data.default_config()
  cfg.tokenizer = str(tmp_path / "missing.model")
  _raises(lambda: data.get_tokenizer(cfg), "missing.model", "does not exist")
  (tmp_path / "broken.model").write_bytes(b"not a model")
  _raises(
    lambda: data.load_tokenizer(str(tmp_path / "broken.model")),
    "broken.model",
    "not a sentencepiece model",
  )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  cfg = data.default_config()
  cfg.cache_dir = str(tmp_path_factory.mktemp("cache"))
  return cfg, data.get_tokenizer(cfg)


@pytest.mark.parametrize("seq_len", [1, 0, -3])
def test_seq_len_too_small(world, seq_len):
  cfg, tok = world
  _raises(
    lambda: data.lm_batches(cfg, tok, batch_size=2, seq_len=seq_len),
    f"seq_len={seq_len}",
    "seq_len >= 2",
  )


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_too_small(world, batch_size):
  cfg, tok = world
  _raises(
    lambda: data.lm_batches(cfg, tok, batch_size=batch_size, seq_len=8),
    f"batch_size={batch_size}",
    ">= 1",
  )


def test_bad_shard_and_seed(world):
  cfg, tok = world
  _raises(
    lambda: data.lm_batches(cfg, tok, batch_size=2, seq_len=8, shard_index=2, shard_count=2),
    "shard_index=2",
  )
  _raises(lambda: data.lm_batches(cfg, tok, batch_size=2, seq_len=8, seed=-1), "seed=-1")


def test_unknown_dataset_name_and_split():
  cfg = data.default_config()
  cfg.name = "synthetic_wrld"
  _raises(
    lambda: data.validate_config(cfg),
    "config.data.name='synthetic_wrld'",
    "did you mean 'synthetic_world'",
  )
  cfg = data.default_config()
  cfg.split = "pretraining"
  _raises(lambda: data.validate_config(cfg), "config.data.split='pretraining'", "pretrain")
  cfg = data.default_config()
  cfg.world_size = "huge"
  _raises(lambda: data.validate_config(cfg), "config.data.world_size='huge'")


def test_interrupted_preparation_leaves_nothing_complete(tmp_path, monkeypatch):
  cfg = data.default_config()
  cfg.cache_dir = str(tmp_path)
  real = documents.pretrain_documents

  def crash(w, split, **kw):
    for i, doc in enumerate(real(w, split, **kw)):
      if i == 100:
        raise KeyboardInterrupt("simulated kill")
      yield doc

  monkeypatch.setattr(documents, "pretrain_documents", crash)
  with pytest.raises(KeyboardInterrupt):
    data.open_split(cfg)
  assert _no_complete_dataset(cfg.cache_dir)
  assert not builders._builder(cfg).is_prepared()
  monkeypatch.setattr(documents, "pretrain_documents", real)
  assert len(data.open_split(cfg)) > 100
