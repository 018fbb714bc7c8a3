"""End to end: pretrain configs/pretrain.py:tiny briefly, then complete and chat with experiments.generate."""

import json
import os
import subprocess

import pytest

from tests import launcher
from tests.conftest import REPO

PROMPT = "Alice lives in"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
  """A pretraining workdir after 10 steps of the tiny preset."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  launcher.run(
    "pretrain",
    "configs/pretrain.py:tiny",
    workdir,
    "--config.train.steps=10",
    f"--config.data.cache_dir={data_cache}",
  )
  return workdir


def test_generate_completes_a_prompt(trained, tmp_path):
  proc = launcher.run(
    "generate",
    "configs/generate.py:tiny",
    str(tmp_path),
    f"--config.checkpoint={trained}",
    f"--config.prompt={PROMPT}",
  )
  lines = proc.stdout.splitlines()
  assert lines[0] == f">>> {PROMPT}"
  assert lines[1].startswith(PROMPT) and len(lines[1]) > len(PROMPT)
  with open(os.path.join(tmp_path, "generations.jsonl")) as f:
    record = json.loads(f.readline())
  assert record["prompt"] == PROMPT and 1 <= len(record["tokens"]) <= 16
  assert PROMPT + record["text"] == lines[1]


def test_generate_chat_answers_each_turn(trained, tmp_path):
  cmd = launcher.command(
    "generate",
    "configs/generate.py:tiny",
    str(tmp_path),
    f"--config.checkpoint={trained}",
    "--config.chat=True",
  )
  proc = subprocess.run(
    cmd,
    cwd=REPO,
    env=launcher.env(),
    input="Hello\nWhere does Alice live?\n",
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["assistant", "assistant"]


def test_exported_hf_folder_gives_the_same_completion(trained, tmp_path):
  """load_workdir -> hf.save -> load_hf (with the workdir's tokenizer): identical greedy text."""
  from llmrl.decoding import loading
  from llmrl.decoding.text import complete
  from llmrl.interop import hf

  model, params, tok = loading.load_workdir(trained)
  hf.save(model, params, str(tmp_path / "hf"))
  model2, params2, tok2 = loading.load_hf(
    str(tmp_path / "hf"), os.path.join(trained, "tokenizer.model")
  )
  kw = dict(max_new_tokens=12, method="greedy")
  first = complete(model, params, tok, [PROMPT, "Bob"], **kw)
  second = complete(model2, params2, tok2, [PROMPT, "Bob"], **kw)
  assert [c.tokens for c in first] == [c.tokens for c in second]
  assert first[0].text and first[0].prompt == PROMPT
